"""``python -m elmo_pipeline.evaluate``: the evaluate stage's command line."""

from elmo_pipeline.evaluate.command import main

raise SystemExit(main())
