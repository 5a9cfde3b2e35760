"""20 SIGINTs at random moments into `kvmtest run --repeat 30 --jobs 4`: each must give a partial
report (exit 130, JSON `interrupted` set, JUnit written, no traceback).

    .venv/bin/python benchmarks/interrupt_soak.py
"""

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

rng = random.Random(2026)
ok = 0
for i in range(20):
    d = tempfile.mkdtemp()
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kvmtest",
            "run",
            "--repeat",
            "30",
            "--jobs",
            "4",
            "--json-file",
            f"{d}/r.json",
            "--junit-xml",
            f"{d}/j.xml",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    line = p.stderr.readline()
    time.sleep(rng.uniform(0, 3))
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    doc = json.load(open(f"{d}/r.json"))
    good = (
        p.returncode == 130
        and doc["interrupted"].startswith("interrupted by SIGINT")
        and "Traceback" not in err
    )
    ok += good
    print(i, p.returncode, doc["interrupted"], "ok" if good else "BAD")
print(f"{ok} of 20 SIGINTs gave a partial report")
