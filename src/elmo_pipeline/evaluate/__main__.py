"""``python -m elmo_pipeline.evaluate``: the evaluate stage's command line."""

from elmo_pipeline.evaluate.stage import main

raise SystemExit(main())
