from django.contrib import admin
from django.http import HttpRequest


def admin_chrome(request: HttpRequest) -> dict:
    """What admin/base_site.html needs, so our pages wear the admin's header and look.

    Admin views pass their own values, which take precedence over these."""
    user = getattr(request, "user", None)
    return {
        "site_header": admin.site.site_header,
        "site_title": admin.site.site_title,
        "has_permission": bool(user and user.is_active and user.is_staff),
    }
