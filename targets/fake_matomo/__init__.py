"""A local Matomo 5 look-alike for the test suite and benchmarks (no Django, stdlib only;
gevent optional for speed in the command-line server).

In a test::

    with FakeMatomo(sites=[Site(1, timezone="Europe/Stockholm")],
                    tokens={"tok": {"write": [1]}}) as matomo:
        post hits to matomo.tracking_url ...
        assert len(matomo.visits(1)) == 3
        assert matomo.stats()["token_in_url"] == 0

As a separate process (tests in another process, benchmarks)::

    python -m targets.fake_matomo --port 8765 --sites 1:Europe/Stockholm --token tok:write=1
    # prints http://127.0.0.1:8765/ ; then GET /_fake/stats, POST /_fake/faults, POST /_fake/reset

What it emulates (Matomo 5, checked against its sources; see ``rules.py`` for the order):

* ``matomo.php``/``piwik.php``, GET or POST form for single hits, POST JSON for bulk.
* 400 for: missing/unknown ``idsite`` (``idSite`` is not ``idsite``), a ``cid`` that is not
  16 hex characters, ``cip``/``country``/``region``/``city``/``lat``/``long`` or a ``cdt``
  older than 24 h without a token with write/admin access (or super user), a ``cdt``
  older than the raw-data retention. In a bulk these are counted ``invalid``.
* Excluded (answered 200/204, counted in ``tracked``, recorded nowhere): ``rec`` missing or
  0, bot user agents and Matomo's bot IP ranges unless ``bots=1``, a repeated ``ec_id``.
* Secure-only tokens count only when sent as a POST form field; every ``token_auth`` in a
  URL query string is counted in ``stats()["token_in_url"]``.
* Backdating: a hit older than the visitor's latest recorded hit fails with 500; in a bulk
  the whole batch is rolled back (Matomo's bulk import is one transaction).
* The visitor lookup of ``Tracker/Model::findVisitor``: a ``uid`` hit whose visitor id
  (sha1 of the uid) has no visit yet is filed under the most recent visitor with the same
  configuration fingerprint (user agent, plugin flags, IP, language) within 30 minutes
  whose user id is empty or the same (``stats()["uid_matched_by_fingerprint"]``). Matomo
  parses the user agent into OS, browser and version; the fake compares the whole string.
* Returning visits: a visit is returning only when its visitor id had an earlier visit
  (``Visit.returning``, Matomo 5's ``visitor_returning``); ``_idvc``/``_viewts`` are ignored.
* Channels: ``Visit.referrer`` classifies the first hit's ``urlref`` with Matomo's own
  search-engine and social lists (``trafficinator.referrers``).
* Faults on demand (``Fault``; ``fail_next``, ``hang_next``, ``reset_next``, latency), and
  the "500 but stored" answer to a bulk request that starts a site-day (``Fault(kind=
  "stored_500")``), which follows docs/matomo-tracking.md's measurement on Matomo 5.0.2 with
  MariaDB (see ``faults.Fault``).
* Capacity mode (``capacity=N``, ``service_time_per_hit``, ``service_time_per_request``;
  ``--capacity``, ``--hit-ms``, ``--request-ms``): a fixed number of "PHP workers", each
  busy for a time per request and per hit, so a sender that leaves workers idle is
  visibly slower, as against a real Matomo.
* Reporting API: API.getMatomoVersion, SitesManager.getSiteFromId and the
  getSitesId*/getSites* access lists, UsersManager.hasSuperUserAccess /
  getSitesAccessFromUser, CoreAdminHome.invalidateArchivedReports, VisitsSummary.get
  (``nb_actions`` as Matomo's ``visit_total_actions``: no content, goal or ecommerce
  actions), Live.getCounters, Goals.getGoals / Goals.addGoal (write access) and
  SitesManager.updateSite (``ecommerce``, ``siteSearch``; admin access).
* Goals must exist: a conversion (``idgoal`` > 0) for a goal the site lacks is a 400, or
  ``invalid`` in bulk ("idGoal N does not exist"); a ``Site`` has no goals unless given
  (``goals={1: "Signup"}``) or added through the API. In cluster mode each worker keeps
  its own goals (tests use one process).

Where it deliberately differs from a real Matomo 5.3 (each is a documented choice):

* ``cid`` must be hex (Matomo only checks the length and mangles non-hex ids); turn off with
  ``strict_cid_hex=False``.
* A backdated hit is a 500 whenever its ``cdt`` is before the visitor's latest recorded hit
  (whole seconds). Matomo fails only when the backdated hit matches a later visit, and its
  single-hit answer may end up as 400 (``Response::outputResponse`` re-sends 400 when nothing
  was logged); docs/matomo-tracking.md records a database error, so the fake answers 500.
* ``record_statistics`` per site is fake-only (Matomo's switch is global).
* Reporting API errors other than access errors answer 200, access errors 401; only
  ``format=json`` is produced.
* A secure-only token in a tracking URL is ignored here. Matomo issue #24978 reports that
  Matomo 5 accepts it for write/admin users (their tokens are in the tracker's site cache);
  super users' secure-only tokens are refused as here.
* Bot detection knows DeviceDetector's generic rule plus common words and names, not its
  full list of hundreds of named bots.

Matomo details docs/matomo-tracking.md simplifies, followed here as Matomo does them:

* A bare ``GET matomo.php`` answers 200 with the "This resource is part of Matomo" text;
  a request with parameters that tracked nothing (or an empty POST) answers 400 with it.
* ``rec`` is cast like PHP: missing or 0 excludes the hit, any other number records it.
* A bulk entry string is kept when it has a non-empty query after "?" (Matomo runs
  ``parse_url``), so ``"matomo.php?idsite=1&..."`` counts too; ``"idsite=1&..."`` is dropped
  silently. ``{}``, ``null`` and numbers become empty requests, counted as tracked.
* ``invalid_indices`` (super user token only) are positions among the kept entries.
* Reporting API: a token that is unknown, or secure-only and sent in the URL, is an error
  (401, Matomo's "Unable to authenticate..." wording), not an anonymous call.
"""

from .faults import Fault
from .model import Hit, Site, Token, Visit, group_visits
from .server import GIF, MATOMO_TRACKER_TEXT, FakeMatomo

__all__ = ["GIF", "MATOMO_TRACKER_TEXT", "FakeMatomo", "Fault", "Hit", "Site", "Token", "Visit", "group_visits"]
