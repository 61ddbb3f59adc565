"""The forms of a notice on each channel (pure functions of the stored content).

Slack (incoming webhook): a JSON body with `text` (the whole notice in one line, shown in
notifications and where blocks cannot be) and `blocks` (a header, the deal's facts as section
fields, the message, the fix). Per Slack's Block Kit reference: a header's plain text holds 150
characters, a section's text 3,000, a field 2,000 and a section at most 10 fields; `&`, `<` and
`>` are control characters in mrkdwn and are sent as `&amp;`, `&lt;`, `&gt;`.

JSON webhook: the notice as data (`id`, `type`, `deal`, `error`, `stream`, `fix`, ...), with
the notice id so a receiver can drop a repeated delivery.

Email: plain text, with a Message-ID derived from the notice id for the same reason.
"""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

from sf_bridge import __version__

SLACK_HEADER_LIMIT = 150
SLACK_TEXT_LIMIT = 3000
SLACK_FIELD_LIMIT = 2000
SLACK_FALLBACK_LIMIT = 3000


def notice_ref(notice_id: int) -> str:
    """The notice's stable id as receivers see it (and use to drop duplicates)."""
    return f"sfb-notice-{notice_id}"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _field(label: str, value: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": _cut(f"*{label}*\n{value}", SLACK_FIELD_LIMIT)}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _cut(text, SLACK_TEXT_LIMIT)}}


def slack_payload(content: dict[str, Any]) -> dict[str, Any]:
    """The body posted to a Slack incoming webhook."""
    fields: list[dict[str, str]] = []
    deal = content.get("deal")
    if deal:
        name = slack_escape(deal.get("opportunity_name") or "")
        fields.append(_field("Opportunity", f"{name} `{deal['opportunity_id']}`".strip()))
        account = slack_escape(deal.get("account_name") or "")
        account_id = f"`{deal['account_id']}`" if deal.get("account_id") else ""
        fields.append(_field("Account", f"{account} {account_id}".strip() or "unknown"))
        fields.append(_field("Step", f"`{deal.get('step')}`, attempt {deal.get('attempts')}"))
    stream = content.get("stream")
    if stream:
        fields.append(_field("Channel", f"`{slack_escape(stream['channel'])}`"))
        fields.append(_field("Down since", f"{stream.get('down_since')} UTC"))
    error = content.get("error")
    if error:
        fields.append(_field("Error code", f"`{slack_escape(str(error['code']))}`"))
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _cut(content["title"], SLACK_HEADER_LIMIT)},
        }
    ]
    if fields:
        blocks.append({"type": "section", "fields": fields[:10]})
    if error:
        blocks.append(_section(slack_escape(str(error["message"]))))
    fix = content.get("fix") or {}
    lines = [f"*Fix:* {slack_escape(fix.get('hint') or '')}"]
    if fix.get("command"):
        lines.append(f"`{slack_escape(fix['command'])}`")
    if fix.get("console_url"):
        lines.append(f"<{fix['console_url']}|Open in the console>")
    blocks.append(_section("\n".join(lines)))
    return {"text": _cut(slack_escape(_one_line(content)), SLACK_FALLBACK_LIMIT), "blocks": blocks}


def _one_line(content: dict[str, Any]) -> str:
    fix = content.get("fix") or {}
    text = f"{content['title']}. {content['summary']}"
    if fix.get("command"):
        text += f" Run: {fix['command']}"
    if fix.get("console_url"):
        text += f" {fix['console_url']}"
    return text


def webhook_payload(notice_id: int, content: dict[str, Any]) -> dict[str, Any]:
    """The body posted to the generic JSON webhook."""
    return {
        "id": notice_ref(notice_id),
        "type": content["kind"],
        "occurred_at": content["occurred_at"],
        "title": content["title"],
        "summary": content["summary"],
        "deal": content.get("deal"),
        "error": content.get("error"),
        "stream": content.get("stream"),
        "fix": content.get("fix"),
        "source": f"sf-bridge {__version__}",
    }


def email_text(content: dict[str, Any]) -> str:
    lines = [content["title"], "", content["summary"], ""]
    deal = content.get("deal")
    if deal:
        lines += [
            f"Opportunity: {deal.get('opportunity_name') or ''} ({deal['opportunity_id']})",
            f"Account:     {deal.get('account_name') or ''} ({deal.get('account_id') or ''})",
            f"Step:        {deal.get('step')}, attempt {deal.get('attempts')}",
        ]
    stream = content.get("stream")
    if stream:
        lines += [f"Channel:     {stream['channel']}", f"Down since:  {stream['down_since']} UTC"]
    error = content.get("error")
    if error:
        lines += [f"Error code:  {error['code']}", "", str(error["message"])]
    fix = content.get("fix") or {}
    lines += ["", f"Fix: {fix.get('hint') or ''}"]
    if fix.get("command"):
        lines.append(f"    {fix['command']}")
    if fix.get("console_url"):
        lines.append(f"Console: {fix['console_url']}")
    return "\n".join(lines).rstrip() + "\n"


def email_message(
    notice_id: int, content: dict[str, Any], *, sender: str, recipients: list[str]
) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = f"[sf-bridge] {_cut(content['title'], 200)}"
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = formatdate(usegmt=True)
    domain = sender.rpartition("@")[2].strip("> ") or "sf-bridge.invalid"
    # The same id on every attempt: a mail client shows a repeated delivery once.
    message["Message-ID"] = f"<{notice_ref(notice_id)}@{domain}>"
    message["X-SF-Bridge-Notice"] = notice_ref(notice_id)
    message.set_content(email_text(content))
    return message
