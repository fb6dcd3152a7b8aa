"""python -m nested_diffusion.cli …"""
import sys

from .main import main

sys.exit(main())
