"""A small Django project for the Django integration tests (views in ``urls.py``;
the settings are in :mod:`tests.integrations.django_support`)."""
