from kvmtest.cli import main

raise SystemExit(main())
