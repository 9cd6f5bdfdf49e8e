from vfio_advisor.cli import main

raise SystemExit(main())
