"""Request types the views share.

django-htmx's middleware adds ``request.htmx`` to every request; a view that reads it
annotates its request as ``HtmxHttpRequest`` so the type checker knows the attribute is
there (the pattern django-htmx documents for typed code).
"""

from django.http import HttpRequest
from django_htmx.middleware import HtmxDetails


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails
