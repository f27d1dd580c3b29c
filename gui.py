"""Start the CharLoRA app: `python gui.py` (see `python gui.py --help`)."""

from charlora.ui.app import main

if __name__ == "__main__":
    main()
