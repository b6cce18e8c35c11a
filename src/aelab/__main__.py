from aelab.cli import main

raise SystemExit(main())
