"""A minimal Django project on sessionary sessions: log in, count visits in the session, see
your sessions and log out the other ones. Run it from examples/django::

    python manage.py migrate && python manage.py createsuperuser && python manage.py runserver
"""
