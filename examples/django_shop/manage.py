#!/usr/bin/env python
"""The shop's manage.py. One command runs it locally with tq (see README.md):

python manage.py tq dev
"""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
