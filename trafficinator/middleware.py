"""Security headers that Django 5.2 does not set by itself, health checks that answer
whatever Host a probe sends, and a readable answer to an oversized form."""

from django.conf import settings
from django.contrib import messages
from django.contrib.messages.storage import default_storage
from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse, HttpResponseRedirect


class ContentSecurityPolicyMiddleware:
    """Send the Content-Security-Policy from settings on every response.

    Django 5.2 has no built-in CSP; one header from one setting is all we need, so this
    is a few lines rather than a dependency. An empty setting turns it off."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.policy = settings.CONTENT_SECURITY_POLICY

    def __call__(self, request):
        response = self.get_response(request)
        if self.policy and "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = self.policy
        return response


class HealthCheckMiddleware:
    """Answer /health/ and /health/web/ before host validation and the https redirect.

    Container health checks and Kubernetes probes call the process directly, by IP and
    over plain http: with ALLOWED_HOSTS set to the public name and SECURE_SSL_REDIRECT on,
    Django would answer them 400 or 301. The replies build no URL from the Host header,
    so skipping its validation here is safe. Placed first in MIDDLEWARE."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        from trafficinator import views

        if request.method == "GET":
            if request.path_info == "/health/":
                return views.health(request)
            if request.path_info == "/health/web/":
                return views.health_web(request)
        return self.get_response(request)


class RequestTooBigMiddleware:
    """A form POST larger than DATA_UPLOAD_MAX_MEMORY_SIZE gets the form page back with a
    message saying so, instead of Django's bare "400 Bad Request".

    Django raises RequestDataTooBig when the body is first read, which the CSRF check does
    before any view runs; so this reads it first (it sits before CsrfViewMiddleware) and,
    when too big, redirects to the same page (GET) with an error message. Nothing was
    saved: the request was never handled. htmx requests get a 413 with the message."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.method == "POST":
            try:
                request.POST  # noqa: B018 - reading it is the check
            except RequestDataTooBig:
                return self.too_big(request)
        return self.get_response(request)

    def too_big(self, request):
        limit_mb = settings.DATA_UPLOAD_MAX_MEMORY_SIZE / 1_000_000
        message = (
            f"What you sent is larger than the {limit_mb:g} MB a form may hold "
            "(DATA_UPLOAD_MAX_MEMORY_SIZE); nothing was saved. Upload long lists as a file, or split them."
        )
        if request.headers.get("HX-Request") == "true":
            return HttpResponse(message, status=413, content_type="text/plain; charset=utf-8")
        storage = default_storage(request)
        storage.add(messages.ERROR, message)
        response = HttpResponseRedirect(request.get_full_path(), status=303)
        storage.update(response)
        return response
