"""The simulated system (reference model + stepper guest + threads) and its schedulers."""
