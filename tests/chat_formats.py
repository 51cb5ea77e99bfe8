"""Checks of a chat payload against its format's rules, shared by unit and end-to-end tests.

Slack blocks go through slack_sdk's own validation; Discord's embed limits are its
documented numbers; a Teams Workflows envelope is checked against the Adaptive Card 1.4
elements batchmon uses (the official JSON schema is not vendored here).
"""

from __future__ import annotations

from typing import Any

from slack_sdk.models.blocks import Block

__all__ = ["discord_problems", "slack_problems", "teams_problems"]


def _utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def slack_problems(payload: dict[str, Any]) -> list[str]:
    """What slack_sdk refuses in an incoming-webhook body (``[]``: valid)."""
    problems = []
    if not 0 < len(payload.get("text", "")) <= 3000:
        problems.append("text: empty or over 3000")
    blocks = payload.get("blocks", [])
    if len(blocks) > 50:
        problems.append("blocks: over 50")
    for index, block in enumerate(blocks):
        try:
            parsed = Block.parse(block)
            assert parsed is not None
            parsed.validate_json()
        except Exception as exc:  # noqa: BLE001 - the problem is the answer
            problems.append(f"blocks[{index}]: {exc}")
    return problems


def discord_problems(payload: dict[str, Any]) -> list[str]:
    """Where a webhook body breaks Discord's embed limits (``[]``: within them)."""
    problems = []
    if payload.get("allowed_mentions") != {"parse": []}:
        problems.append("allowed_mentions: not {'parse': []}")
    embeds = payload.get("embeds", [])
    if not 1 <= len(embeds) <= 10:
        problems.append("embeds: not 1 to 10")
    for embed in embeds:
        limits = {"title": 256, "description": 4096}
        for key, limit in limits.items():
            if _utf16(embed.get(key, "")) > limit:
                problems.append(f"{key}: over {limit}")
        fields = embed.get("fields", [])
        if len(fields) > 25:
            problems.append("fields: over 25")
        problems.extend(
            f"field {field['name']!r}: empty or too long"
            for field in fields
            if not 0 < _utf16(field["name"]) <= 256 or not 0 < _utf16(field["value"]) <= 1024
        )
        footer = embed.get("footer", {}).get("text", "")
        total = sum(_utf16(embed.get(key, "")) for key in limits) + _utf16(footer)
        total += sum(_utf16(f["name"]) + _utf16(f["value"]) for f in fields)
        if total > 6000:
            problems.append(f"embed: {total} characters, over 6000")
        if len(embed.get("url", "")) > 2048:
            problems.append("url: over 2048")
    return problems


_ELEMENTS = {
    "RichTextBlock": {"type", "inlines", "spacing", "separator", "id"},
    "FactSet": {"type", "facts", "spacing", "separator", "id"},
    "TextBlock": {"type", "text", "wrap", "weight", "size", "color", "isSubtle", "spacing"},
}
_TEXT_RUN = {"type", "text", "weight", "size", "color", "isSubtle", "italic", "strikethrough"}
_COLOURS = {"Default", "Dark", "Light", "Accent", "Good", "Warning", "Attention"}


def teams_problems(payload: dict[str, Any]) -> list[str]:
    """Where a Workflows envelope leaves the Adaptive Card 1.4 elements Teams shows."""
    problems = []
    if payload.get("type") != "message":
        problems.append("type: not 'message'")
    attachments = payload.get("attachments", [])
    if len(attachments) != 1:
        return [*problems, "attachments: not exactly one"]
    [attachment] = attachments
    if attachment.get("contentType") != "application/vnd.microsoft.card.adaptive":
        problems.append("contentType: not an Adaptive Card")
    card = attachment.get("content", {})
    if (card.get("type"), card.get("version")) != ("AdaptiveCard", "1.4"):
        problems.append("content: not an AdaptiveCard 1.4")
    for index, element in enumerate(card.get("body", [])):
        kind = element.get("type")
        if kind not in _ELEMENTS or not set(element) <= _ELEMENTS[kind]:
            problems.append(f"body[{index}]: {kind} with {sorted(element)}")
            continue
        for run in element.get("inlines", []):
            if run.get("type") != "TextRun" or not set(run) <= _TEXT_RUN:
                problems.append(f"body[{index}]: inline {run}")
            elif (
                not isinstance(run.get("text"), str) or run.get("color", "Default") not in _COLOURS
            ):
                problems.append(f"body[{index}]: TextRun text or colour")
        problems.extend(
            f"body[{index}]: fact {fact}"
            for fact in element.get("facts", [])
            if set(fact) != {"title", "value"} or not all(isinstance(v, str) for v in fact.values())
        )
    problems.extend(
        f"actions: {action}"
        for action in card.get("actions", [])
        if action.get("type") != "Action.OpenUrl" or not action.get("url", "").startswith("http")
    )
    if len(str(payload).encode()) > 28_000:
        problems.append("message: over 28 KB")
    return problems
