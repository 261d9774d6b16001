"""Security headers that Django 5.2 does not set by itself, and health checks that answer
whatever Host a probe sends."""

from django.conf import settings


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
