from active_series.devtools.stripe_emulator.command import main

raise SystemExit(main())
