"""The built-in Light / Medium / Heavy / Extreme presets.

Values are those the original Trafficinator shipped (visits, concurrency, page views,
visit minutes, pauses, probabilities, order values); currency and time zone follow our
defaults (SEK, CET). They are copied here, not imported, because a migration must keep
working when the model changes later.
"""

from decimal import Decimal

from django.db import migrations

BUILTINS = [
    # name, visits/day, concurrency, pageviews, visit minutes, pause s, search, outlinks,
    # downloads, click events, other events, direct, ecommerce, max order value, countries
    ("Light", 1_000, 10, (2, 4), (0.5, 3.0), (1.0, 3.0), 0.10, 0.05, 0.03, 0.15, 0.08, 0.40, 0.02, "99.99", False),
    ("Medium", 10_000, 50, (3, 6), (1.0, 8.0), (0.5, 2.0), 0.15, 0.10, 0.08, 0.25, 0.12, 0.30, 0.05, "299.99", True),
    ("Heavy", 50_000, 150, (4, 8), (2.0, 12.0), (0.3, 1.5), 0.20, 0.15, 0.12, 0.30, 0.15, 0.25, 0.08, "499.99", True),
    ("Extreme", 100_000, 300, (5, 10), (3.0, 15.0), (0.2, 1.0), 0.25, 0.18, 0.15, 0.35, 0.18, 0.20, 0.10, "999.99", True),
]

DESCRIPTIONS = {
    "Light": "Low volume for development and demos: 1,000 visits a day.",
    "Medium": "A realistic mid-size site: 10,000 visits a day.",
    "Heavy": "High-volume stress: 50,000 visits a day.",
    "Extreme": "Enterprise-scale stress: 100,000 visits a day.",
}


def create_builtins(apps, schema_editor):
    Preset = apps.get_model("presets", "Preset")
    for (name, visits, concurrency, pageviews, minutes, pause, search, outlinks, downloads, clicks, events,
         direct, ecommerce, max_order, countries) in BUILTINS:
        Preset.objects.update_or_create(
            name=name,
            defaults=dict(
                description=DESCRIPTIONS[name],
                is_builtin=True,
                visits_per_day=visits,
                concurrency=concurrency,
                pageviews_min=pageviews[0],
                pageviews_max=pageviews[1],
                visit_duration_min=minutes[0],
                visit_duration_max=minutes[1],
                pause_min=pause[0],
                pause_max=pause[1],
                site_search_probability=search,
                outlinks_probability=outlinks,
                downloads_probability=downloads,
                click_events_probability=clicks,
                random_events_probability=events,
                direct_traffic_share=direct,
                ecommerce_probability=ecommerce,
                ecommerce_order_value_min=Decimal("15.99"),
                ecommerce_order_value_max=Decimal(max_order),
                ecommerce_items_min=1,
                ecommerce_items_max=5,
                ecommerce_tax_rate=Decimal("0.25"),
                ecommerce_shipping_options=[0, 4.99, 9.99, 19.99],
                randomize_countries=countries,
                currency="SEK",
                timezone="CET",
            ),
        )


def remove_builtins(apps, schema_editor):
    apps.get_model("presets", "Preset").objects.filter(is_builtin=True).delete()


class Migration(migrations.Migration):
    dependencies = [("presets", "0001_initial")]
    operations = [migrations.RunPython(create_builtins, remove_builtins)]
