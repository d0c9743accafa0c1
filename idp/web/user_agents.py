"""A User-Agent header in a few words for the session list on /account ("Chrome on Linux").

Dependency-free and deliberately small: a handful of browsers and systems, tried in an
order that respects how user agents lie (Edge and Opera say "Chrome", Chrome says
"Safari", an iPhone says "like Mac OS X", Android says "Linux"). Anything else is
"Unknown browser". It only labels a row for a person to recognise; nothing relies on it."""

from __future__ import annotations

import re

UNKNOWN = "Unknown browser"
MAX_CHARS = 512  # the column keeps 300; nothing longer is worth scanning

# (name, pattern) in order: the first match wins.
_BROWSERS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("Edge", r"\b(?:Edg|EdgA|EdgiOS|Edge)/"),
        ("Opera", r"\b(?:OPR|OPiOS|Opera)\b"),
        ("Samsung Internet", r"\bSamsungBrowser/"),
        ("Vivaldi", r"\bVivaldi/"),
        ("Firefox", r"\b(?:Firefox|FxiOS)/"),
        ("Chrome", r"\b(?:Chrome|HeadlessChrome|CriOS|Chromium)/"),
        ("Safari", r"\bVersion/[\d.]+.*\bSafari/"),
        ("Safari", r"\b(?:iPhone|iPad|iPod);.*\bAppleWebKit/"),  # in-app browsers on iOS are WebKit
        ("curl", r"^curl/"),
    )
)

_SYSTEMS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("iPhone", r"\biPhone\b|\biPod\b"),
        ("iPad", r"\biPad\b"),
        ("Android", r"\bAndroid\b"),
        ("ChromeOS", r"\bCrOS\b"),
        ("Windows", r"\bWindows\b"),
        ("macOS", r"\bMac OS X\b|\bMacintosh\b"),
        ("Linux", r"\bLinux\b|\bX11\b"),
    )
)


def describe(user_agent: str | None) -> str:
    """ "Browser on System", "Browser" or "Unknown browser on System"; "Unknown browser"
    when neither is recognised."""
    text = (user_agent or "")[:MAX_CHARS]
    browser = next((name for name, pattern in _BROWSERS if pattern.search(text)), None)
    system = next((name for name, pattern in _SYSTEMS if pattern.search(text)), None)
    if browser and system:
        return f"{browser} on {system}"
    if browser:
        return browser
    if system:
        return f"{UNKNOWN} on {system}"
    return UNKNOWN
