#!/usr/bin/env python
"""The example's manage.py: `python manage.py migrate`, `createsuperuser`, `runserver`,
`clearsessions` (reaps expired sessions from the sessionary store)."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "counter_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
