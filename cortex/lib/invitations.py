"""Gathering invitations by mail, with a calendar entry for appointments — composed here, sent elsewhere.

A pure module (no database, no HTTP, no settings): it turns a gathering and one invitee into the keyword arguments
of ``models.mail.queue_mail`` (subject, plain text, HTML, headers, attachments, kind). The caller queues them in
the transaction of the change the mail is about::

    mail = invitation_mail(gathering, invitee, join_url(code, base_url, custom_protocol))
    queue_mail(invitee_address(invitee), **mail, project_id=project.id)

What goes out:

- ``REQUEST`` (an invitation, or an updated one after the time moved): subject ``Invitation: {name}``; the body
  names the gathering, the inviter (``Invited by {inviterName}``), the time (appointments), the join link and the
  join code, the description and the ``invitationUrl``. ``Reply-To`` is the inviter's e-mail address.
- ``CANCEL``: subject ``Cancelled: {name}``; the body says the gathering was cancelled.
- An ``appointment`` with ``starts_at`` also carries ``invite.ics`` (``text/calendar; method=REQUEST|CANCEL;
  charset=UTF-8``): see :func:`ics`. Lobbies, open gatherings and appointments without a date carry none.

Invalid input raises ``ValueError`` (an inviter or invitee address with CR/LF or without ``@``, a naive or
reversed time, an unknown time zone, an unknown method); names and subjects are folded onto one line instead.
"""

from __future__ import annotations

import html as _html
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from email.utils import formataddr, parseaddr
from urllib.parse import quote, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from icalendar import Calendar, Event, vCalAddress, vText

__all__ = [
    "APPOINTMENT",
    "DEFAULT_DURATION",
    "GatheringInfo",
    "Invitee",
    "ics",
    "invitation_mail",
    "invitee_address",
    "join_url",
    "uid",
]

APPOINTMENT = "appointment"
METHODS = ("REQUEST", "CANCEL")
DEFAULT_DURATION = timedelta(hours=1)  # an appointment without ends_at lasts this long in the calendar entry
ATTACHMENT_NAME = "invite.ics"
PRODID = "-//Cortex//Gatherings//EN"
UID_DOMAIN = "cortex"

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*\Z")  # RFC 3986 scheme
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class GatheringInfo:
    """What an invitation says about its gathering.

    ``starts_at`` / ``ends_at`` are aware datetimes (UTC by convention; any aware value works). Without
    ``ends_at`` the calendar entry lasts :data:`DEFAULT_DURATION` (1 h) from ``starts_at``. ``timezone`` is an
    IANA name the calendar entry and the body show the time in (None → UTC). ``sequence`` is the calendar
    entry's revision: raise it whenever the time moves and send an updated ``REQUEST``."""

    id: str
    name: str
    type: str  # lobby | appointment | open
    join_code: str
    description: str | None = None
    inviter_name: str | None = None
    inviter_email: str | None = None
    invitation_url: str | None = None
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    timezone: str | None = None
    sequence: int = 0


@dataclass(frozen=True)
class Invitee:
    """One invited person: the invitation's id (part of the calendar UID), the address, an optional name."""

    invitation_id: str
    email: str
    name: str | None = None


# ------------------------------------------------------------------------------------------ helpers


def _one_line(value: str | None) -> str:
    """``value`` with every run of whitespace (CR/LF included) and control characters folded into one space."""
    return " ".join(_CONTROL.sub(" ", value or "").split())


def _address(value: str | None, what: str) -> str:
    """A bare e-mail address, checked: one line, exactly one address, with an ``@`` (ValueError otherwise)."""
    if not isinstance(value, str) or "\r" in value or "\n" in value or _CONTROL.search(value):
        raise ValueError(f"{what} must be one line of text without control characters")
    address = value.strip()
    if not address or "@" not in address or parseaddr(address)[1] != address or any(c.isspace() for c in address):
        raise ValueError(f"{what} {value!r} is not an e-mail address")
    return address


def _method(method: str) -> str:
    upper = (method or "").upper()
    if upper not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    return upper


def _zone(g: GatheringInfo):
    if not g.timezone:
        return UTC
    try:
        return ZoneInfo(g.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {g.timezone!r}") from None


def _times(g: GatheringInfo) -> tuple[datetime, datetime]:
    """Start and end of the calendar entry, in the gathering's time zone (end: ``starts_at`` + 1 h if absent)."""
    if g.starts_at is None:
        raise ValueError("the gathering has no starts_at")
    for value, what in ((g.starts_at, "starts_at"), (g.ends_at, "ends_at")):
        if value is not None and (value.tzinfo is None or value.utcoffset() is None):
            raise ValueError(f"{what} must be an aware datetime")
    end = g.ends_at if g.ends_at is not None else g.starts_at + DEFAULT_DURATION
    if end <= g.starts_at:
        raise ValueError("ends_at must be after starts_at")
    zone = _zone(g)
    return g.starts_at.astimezone(zone), end.astimezone(zone)


def _has_calendar_entry(g: GatheringInfo) -> bool:
    return g.type == APPOINTMENT and g.starts_at is not None


def _when(g: GatheringInfo) -> str | None:
    """``2026-01-15 16:00–17:00 (Europe/Berlin)`` for a dated gathering, else None."""
    if g.starts_at is None:
        return None
    start, end = _times(g)
    zone = g.timezone or "UTC"
    if start.date() == end.date():
        return f"{start:%Y-%m-%d %H:%M}–{end:%H:%M} ({zone})"
    return f"{start:%Y-%m-%d %H:%M} – {end:%Y-%m-%d %H:%M} ({zone})"


def _inviter(g: GatheringInfo) -> str:
    """Who invites, as the body says it: the inviter's name, else the address, else ''."""
    return _one_line(g.inviter_name) or _one_line(g.inviter_email)


# ------------------------------------------------------------------------------------------ public API


def join_url(join_code: str, base_url: str | None = None, custom_protocol: str | None = None) -> str:
    """The link that joins a gathering; the join code (percent-encoded) is its last path segment.

    - ``base_url`` (a web page of the game): ``{base_url without trailing "/"}/join/{code}``; a query or
      fragment of ``base_url`` is kept after the path — ``https://play.example/app?x=1`` →
      ``https://play.example/app/join/K7MX3QPA?x=1``.
    - else ``custom_protocol`` (a deep link into the game client): ``{scheme}://join/{code}``, whether it is
      given as ``mygame``, ``mygame:`` or ``mygame://``; a host/path after ``://`` is kept as a prefix —
      ``mygame://lobby/`` → ``mygame://lobby/join/K7MX3QPA``.
    - neither: the join code alone.

    Both given: ``base_url`` wins (every mail client opens https links; the custom protocol only works where the
    game is installed). Empty strings count as absent. ValueError for an empty code, a custom protocol that is
    not a URI scheme, or control characters."""
    code = (join_code or "").strip()
    if not code or _CONTROL.search(join_code):
        raise ValueError("join_code must be a non-empty line of text")
    quoted = quote(code, safe="")
    if _CONTROL.search(base_url or "") or _CONTROL.search(custom_protocol or ""):
        raise ValueError("base_url and custom_protocol must not contain control characters")
    base = (base_url or "").strip()
    protocol = (custom_protocol or "").strip()
    if " " in base or " " in protocol:
        raise ValueError("base_url and custom_protocol must not contain spaces")
    if base:
        parts = urlsplit(base)
        return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/join/{quoted}"))
    if protocol:
        scheme, separator, rest = protocol.partition(":")
        if not _SCHEME.match(scheme) or (separator and rest and not rest.startswith("//")):
            raise ValueError(f"custom_protocol {custom_protocol!r} is not a URI scheme such as 'mygame://'")
        prefix = rest[2:].strip("/") if rest else ""
        return f"{scheme}://{prefix + '/' if prefix else ''}join/{quoted}"
    return code


def uid(g: GatheringInfo, invitee: Invitee) -> str:
    """The calendar entry's UID: one per gathering and invitee, the same for every REQUEST, updated REQUEST and
    CANCEL of that invitation (so calendars update or remove the entry instead of adding another)."""
    return f"{g.id}.{invitee.invitation_id}@{UID_DOMAIN}"


def invitee_address(invitee: Invitee) -> str:
    """The recipient for ``queue_mail``: ``"Name <email>"`` (or the bare address without a name)."""
    address = _address(invitee.email, "the invitee's e-mail")
    name = _one_line(invitee.name)
    return formataddr((name, address)) if name else address


def ics(g: GatheringInfo, invitee: Invitee, method: str = "REQUEST", *, join_link: str | None = None,
        now: datetime | None = None) -> bytes:
    """The iCalendar invitation (RFC 5545 / iTIP RFC 5546) for one invitee of a dated appointment.

    ``METHOD:REQUEST|CANCEL`` and one ``VEVENT``: ``UID`` = :func:`uid`; ``SEQUENCE`` = ``g.sequence`` for a
    REQUEST and ``g.sequence + 1`` for a CANCEL (RFC 5546 §2.1.4: changing STATUS is a revision, and clients
    ignore a message whose SEQUENCE is below the one they hold); ``DTSTAMP`` = ``now`` (default: the current
    time, UTC); ``DTSTART``/``DTEND`` as wall-clock times with ``TZID`` = the gathering's time zone and its
    ``VTIMEZONE`` (UTC: ``Z`` times, no VTIMEZONE); ``DTEND`` = ``starts_at`` + 1 h without ``ends_at``;
    ``SUMMARY`` = the name; ``DESCRIPTION`` = the description, then the join link and code (CANCEL: a line
    saying it was cancelled, then the description); ``ORGANIZER;CN=
    {inviterName}:mailto:{inviterEmail}`` (only with an inviter e-mail); ``ATTENDEE;CN={name};RSVP=TRUE;
    PARTSTAT=NEEDS-ACTION;ROLE=REQ-PARTICIPANT:mailto:{email}``; ``LOCATION`` and ``URL`` = ``invitation_url``
    (when given); ``STATUS:CONFIRMED`` or ``CANCELLED``.

    ValueError for a gathering that is not an appointment with ``starts_at`` (see :func:`_times` for the rest)."""
    method = _method(method)
    if not _has_calendar_entry(g):
        raise ValueError("only an appointment with starts_at has a calendar entry")
    start, end = _times(g)
    attendee_email = _address(invitee.email, "the invitee's e-mail")
    organizer_email = _address(g.inviter_email, "inviter_email") if g.inviter_email else None
    if g.sequence < 0:
        raise ValueError("sequence must not be negative")

    calendar = Calendar()
    calendar.add("prodid", PRODID)
    calendar.add("version", "2.0")
    calendar.add("calscale", "GREGORIAN")
    calendar.add("method", method)

    event = Event()
    event.add("uid", uid(g, invitee))
    event.add("sequence", g.sequence + (1 if method == "CANCEL" else 0))
    event.add("dtstamp", (now or datetime.now(UTC)).astimezone(UTC))
    event.add("dtstart", start)
    event.add("dtend", end)
    event.add("summary", _one_line(g.name))
    description = [g.description.strip()] if g.description and g.description.strip() else []
    if method == "CANCEL":
        description.insert(0, "This gathering has been cancelled.")
    else:
        join = [f"Join: {join_link}"] if join_link and join_link != g.join_code else []
        description.append("\n".join([*join, f"Join code: {g.join_code}"]))
    event.add("description", "\n\n".join(description))
    if organizer_email:
        organizer = vCalAddress(f"mailto:{organizer_email}")
        if _one_line(g.inviter_name):
            organizer.params["CN"] = vText(_one_line(g.inviter_name))
        event.add("organizer", organizer)
    attendee = vCalAddress(f"mailto:{attendee_email}")
    if _one_line(invitee.name):
        attendee.params["CN"] = vText(_one_line(invitee.name))
    attendee.params["ROLE"] = vText("REQ-PARTICIPANT")
    attendee.params["PARTSTAT"] = vText("NEEDS-ACTION")
    attendee.params["RSVP"] = vText("TRUE")
    event.add("attendee", attendee)
    if g.invitation_url:
        event.add("location", _one_line(g.invitation_url))
        event.add("url", _one_line(g.invitation_url))
    event.add("status", "CANCELLED" if method == "CANCEL" else "CONFIRMED")
    calendar.add_component(event)
    # VTIMEZONE for the TZID used (none for UTC), covering the event's years only (the default span,
    # 1970–2038, would list every transition of those 68 years).
    calendar.add_missing_timezones(first_date=date(start.year - 1, 1, 1), last_date=date(end.year + 2, 1, 1))
    return calendar.to_ical()


def invitation_mail(g: GatheringInfo, invitee: Invitee, join_link: str, method: str = "REQUEST", *,
                    now: datetime | None = None) -> dict:
    """The keyword arguments of ``models.mail.queue_mail`` other than the recipient and ``project_id``:
    ``subject``, ``text``, ``html``, ``headers`` (``Reply-To`` = ``inviter_email`` when given, else empty),
    ``attachments`` (``invite.ics`` for an appointment with ``starts_at``, else empty) and ``kind``
    (``gathering-invitation`` / ``gathering-cancellation``).

    ``join_link`` is :func:`join_url`'s result (the code alone is fine: the body then shows only the code).
    ``method`` ``REQUEST`` invites (or re-invites after a change: send it with the raised ``sequence``),
    ``CANCEL`` tells the gathering was cancelled. ``now`` stamps the calendar entry (DTSTAMP)."""
    method = _method(method)
    _address(invitee.email, "the invitee's e-mail")
    reply_to = _address(g.inviter_email, "inviter_email") if g.inviter_email else None
    name = _one_line(g.name) or "a gathering"
    inviter = _inviter(g)
    when = _when(g)
    link = join_link if join_link and join_link != g.join_code else None
    description = g.description.strip() if g.description and g.description.strip() else None
    greeting = f"Hello {_one_line(invitee.name)}," if _one_line(invitee.name) else "Hello,"

    if method == "REQUEST":
        subject = f"Invitation: {name}"
        lead = f"You are invited to “{name}”."
        lines = [greeting, "", lead]
        if inviter:
            lines.append(f"Invited by {inviter}.")
        if when:
            lines += ["", f"When: {when}"]
        lines.append("")
        if link:
            lines.append(f"Join: {link}")
        lines.append(f"Join code: {g.join_code}")
        if description:
            lines += ["", description]
        if g.invitation_url:
            lines += ["", f"More: {g.invitation_url}"]
    else:
        subject = f"Cancelled: {name}"
        lead = f"The gathering “{name}” has been cancelled."
        lines = [greeting, "", lead]
        if inviter:
            lines.append(f"It was organised by {inviter}.")
        if when:
            lines += ["", f"It was planned for {when}."]
        lines += ["", "Your invitation no longer applies; there is nothing to join."]
    text = "\n".join(lines) + "\n"

    e = _html.escape
    parts = [f"<p>{e(greeting)}</p>", f"<p>{e(lead)}"]
    if method == "REQUEST":
        if inviter:
            parts.append(f"<br>Invited by {e(inviter)}.")
        parts.append("</p>")
        if when:
            parts.append(f"<p>When: {e(when)}</p>")
        join = [f'<a href="{e(link, quote=True)}">Join</a>'] if link else []
        join.append(f"Join code: <strong>{e(g.join_code)}</strong>")
        parts.append(f"<p>{'<br>'.join(join)}</p>")
        if description:
            parts.append(f"<p>{e(description).replace(chr(10), '<br>')}</p>")
        if g.invitation_url:
            url = e(g.invitation_url, quote=True)
            parts.append(f'<p>More: <a href="{url}">{e(g.invitation_url)}</a></p>')
    else:
        if inviter:
            parts.append(f"<br>It was organised by {e(inviter)}.")
        parts.append("</p>")
        if when:
            parts.append(f"<p>It was planned for {e(when)}.</p>")
        parts.append("<p>Your invitation no longer applies; there is nothing to join.</p>")
    html = "\n".join(parts) + "\n"

    attachments = []
    if _has_calendar_entry(g):
        attachments.append({
            "filename": ATTACHMENT_NAME,
            "content_type": f"text/calendar; method={method}; charset=UTF-8",
            "content": ics(g, invitee, method, join_link=join_link, now=now),
        })
    return {
        "subject": subject,
        "text": text,
        "html": html,
        "headers": {"Reply-To": reply_to} if reply_to else {},
        "attachments": attachments,
        "kind": "gathering-invitation" if method == "REQUEST" else "gathering-cancellation",
    }
