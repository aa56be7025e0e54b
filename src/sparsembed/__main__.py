from sparsembed.cli import main

raise SystemExit(main())
