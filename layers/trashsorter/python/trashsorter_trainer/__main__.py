"""``python -m trashsorter_trainer`` locally; shipped as ``train.py`` (sagemaker_program) in the container."""

from trashsorter_trainer.entry import main

if __name__ == "__main__":
    raise SystemExit(main())
