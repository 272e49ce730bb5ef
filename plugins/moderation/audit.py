"""Prompt audit: the `[plugins.moderation]` term lists and patterns, checked against a prompt.

Pure functions, no I/O. `AuditPolicy.from_table(...)` validates the settings (a bad pattern stops the
node with a ConfigError naming it); `policy.check(prompt)` returns the violations, each naming its rule
group and the term or pattern that caught the prompt.

How a prompt is matched (docs/moderation.md says the same for administrators):

- The prompt is normalized: Unicode NFKC, case-folded, accents removed (é -> e), invisible characters
  (zero-width spaces, soft hyphens, direction marks) dropped.
- It is then looked at in several views: as written; with l33t digits and symbols read as letters
  (0 o, 1 i or l, 3 e, 4 a, 5 s, 7 t, 8 b, @ a, $ s, ! i, | l; only inside words that also have a
  letter, so "1girl" is read, "1990" is not); and each of those with spaced-out letters joined
  ("l o l i", "l.o.l.i", "l_o_l_i" -> "loli").
- A term matches whole words: it is not found inside a longer word ("kid" does not match "kidney"),
  words of a phrase may be separated by any spaces or punctuation ("young girl", "young_girl",
  "young, girl"), and a term ending in `*` matches words starting with it ("loli*" matches "lolicon").
  Underscores separate words, as in booru tags.
- Allowed phrases are removed from every view before any term or pattern is tried, so an allowed phrase
  never triggers ("child of light" allowed, "child" blocked: "child of light" passes, "a child" does not).
- Patterns are regular expressions (the `regex` module, a superset of Python's `re`), case-insensitive,
  tried against every view. A pattern is refused at startup when it does not compile, is longer than
  MAX_PATTERN_CHARS, or nests repetition ("(a+)+", "(\\w*)*"), the usual shape of catastrophic
  backtracking; at run time each search stops after `pattern_timeout_ms`, and a prompt whose check
  timed out is refused (fail closed) with a rule naming the pattern.
- The negative prompt is not audited: it names what the image must not show.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import regex

from node.core.config import key, parse_table
from node.core.errors import ConfigError

log = logging.getLogger(__name__)

MAX_PATTERN_CHARS = 300
MAX_TERMS = 10_000
MAX_TERM_CHARS = 200
PATTERN_PREFIX = "re:"
# Rule groups, in the order violations are reported.
TERM_GROUPS = ("minors", "real_people", "banned", "blocked_terms")
GROUP_NAMES = {"minors": "minors", "real_people": "real people", "banned": "banned words",
               "blocked_terms": "blocked terms", "blocked_patterns": "blocked patterns"}
LEVELS = {"PG": 1, "PG-13": 2, "R": 4, "X": 8, "XXX": 16}
LEET_I = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "@": "a",
                        "$": "s", "!": "i", "|": "l"})
LEET_L = str.maketrans({"0": "o", "1": "l", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "@": "a",
                        "$": "s", "!": "i", "|": "l"})
LEET_CHARS = frozenset("0134578@$!|")
# A word, for the l33t reading: letters, digits and the l33t symbols together.
LEET_WORD = re.compile(r"[\w@$!|]+")
# Three or more single letters or digits separated by spaces or light punctuation: "l o l i", "l.o.l.i".
SPACED = re.compile(r"(?<![^\W_])(?:[^\W_][\s._*·'-]+){2,}[^\W_](?![^\W_])")
SPACERS = re.compile(r"[\s._*·'-]+")
# Repetition of a group that itself repeats: "(a+)+", "(a*)*", "(\w+\s?)*", "(x{2,})+".
NESTED_REPEAT = re.compile(r"\((?:[^()\\]|\\.)*(?:[+*]|\{\d*,?\d*\})(?:[^()\\]|\\.)*\)(?:[+*]|\{\d*,?\d*\})")


@dataclass
class ModerationSettings:
    """The [plugins.moderation] table."""

    minors: list[str] = key([], "Terms that sexualise or depict minors; a prompt containing one is refused "
                            "with the rule `minors`. `re:` before an entry makes it a pattern.")
    real_people: list[str] = key([], "Names of real people this node does not generate (rule `real_people`). "
                                 "`re:` before an entry makes it a pattern.")
    banned: list[str] = key([], "Other banned words (rule `banned`). `re:` before an entry makes it a pattern.")
    blocked_terms: list[str] = key([], "More blocked words and phrases (rule `blocked_terms`); a term ending in "
                                   "`*` matches words that start with it.")
    blocked_patterns: list[str] = key([], "Regular expressions (case-insensitive) a prompt must not match "
                                      f"(rule `blocked_patterns`); at most {MAX_PATTERN_CHARS} characters, "
                                      "no nested repetition.")
    allow: list[str] = key([], "Phrases that never trigger a rule, e.g. a title containing a blocked word; "
                           "they are removed before the terms and patterns are tried.")
    max_generation_level: str = key("R", "The highest content level a generation may ask for: PG, PG-13, R, X "
                                    "or XXX.", choices=tuple(LEVELS))
    pattern_timeout_ms: int = key(50, "Longest one pattern may search one prompt, in milliseconds; a prompt "
                                  "whose check runs out of time is refused.", minimum=1, maximum=5000)


@dataclass(frozen=True)
class AuditViolation:
    """A rule the prompt breaks: `rule` is the group (`minors`), `term` the entry that matched,
    `matched` the words of the prompt it matched (as normalized), `message` the sentence a user sees."""

    rule: str
    term: str
    matched: str
    message: str


def fold(text: str) -> str:
    """Normalized text: NFKC, case-folded, accents and invisible characters removed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(c for c in unicodedata.normalize("NFKD", text)
                   if unicodedata.category(c) not in ("Mn", "Cf"))
    return unicodedata.normalize("NFC", text)


def _leet(text: str, table: dict[int, str]) -> str:
    def read(word: re.Match[str]) -> str:
        w = word.group(0)
        if any(c.isalpha() for c in w) and any(c in LEET_CHARS for c in w):
            return w.translate(table)
        return w

    return LEET_WORD.sub(read, text)


def _collapse(text: str) -> str:
    return SPACED.sub(lambda m: SPACERS.sub("", m.group(0)), text)


def views(prompt: str) -> list[str]:
    """The normalized prompt as written, read as l33t, and with spaced-out letters joined."""
    folded = fold(prompt)
    seen: list[str] = []
    for base in (folded, _leet(folded, LEET_I), _leet(folded, LEET_L)):
        for view in (base, _collapse(base)):
            if view not in seen:
                seen.append(view)
    return seen


def check_pattern(pattern: str, where: str) -> regex.Pattern[str]:
    """Compile a configured pattern, refusing the long, the broken and the nested repetitions."""
    if not pattern.strip():
        raise ConfigError(f"{where}: an empty pattern would match every prompt")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ConfigError(f"{where}: the pattern {pattern[:40]!r}... is longer than {MAX_PATTERN_CHARS} characters")
    if NESTED_REPEAT.search(pattern):
        raise ConfigError(f"{where}: the pattern {pattern!r} repeats a group that itself repeats (like (a+)+), "
                          "which can take exponential time; rewrite it without the nesting")
    try:
        return regex.compile(pattern, regex.IGNORECASE | regex.V0)
    except regex.error as exc:
        raise ConfigError(f"{where}: the pattern {pattern!r} is not a valid regular expression: {exc}") from None


WORD = re.compile(r"[^\W_]+")


def term_words(term: str) -> tuple[tuple[str, ...], bool]:
    """A term's normalized words, and whether its last word is a prefix (`loli*`)."""
    words = tuple(WORD.findall(fold(term.rstrip("*"))))
    if not words:
        raise ValueError("has no letters or digits")
    return words, term.endswith("*")


@dataclass
class TermIndex:
    """Terms looked up word by word: a dictionary from first word to phrases, and the one-word prefixes
    by length, so a prompt costs a few dictionary probes per word whatever the number of terms."""

    by_first: dict[str, list[tuple[tuple[str, ...], bool, int]]] = field(default_factory=dict)
    prefixes: dict[int, dict[str, int]] = field(default_factory=dict)

    def add(self, words: tuple[str, ...], prefix: bool, index: int) -> None:
        if prefix and len(words) == 1:
            self.prefixes.setdefault(len(words[0]), {}).setdefault(words[0], index)
        else:
            self.by_first.setdefault(words[0], []).append((words, prefix, index))

    def matches(self, text: str) -> Iterator[tuple[int, int, int]]:
        """(term index, start, end) of each term found in `text`, in text order."""
        spans = [(m.group(0), m.start(), m.end()) for m in WORD.finditer(text)]
        for i, (word, start, end) in enumerate(spans):
            for length, heads in self.prefixes.items():
                index = heads.get(word[:length])
                if index is not None and len(word) >= length:
                    yield index, start, end
            for words, prefix, index in self.by_first.get(word, ()):
                tail = spans[i:i + len(words)]
                if len(tail) < len(words):
                    continue
                if all(w == t[0] for w, t in zip(words[:-1], tail)) and \
                        (tail[-1][0].startswith(words[-1]) if prefix else tail[-1][0] == words[-1]):
                    yield index, start, tail[-1][2]

    def search(self, text: str) -> tuple[int, str] | None:
        """The first term found in `text` (its index and the words it matched), or None."""
        for index, start, end in self.matches(text):
            return index, text[start:end]
        return None

    def remove(self, text: str) -> str:
        """`text` with every match replaced by a separator (allowed phrases leave nothing to match)."""
        pieces, last = [], 0
        for _index, start, end in self.matches(text):
            if start >= last:
                pieces.append(text[last:start] + " | ")
                last = end
        return "".join(pieces) + text[last:]


@dataclass
class _Group:
    """One rule group: its terms (indexed) and its patterns."""

    name: str
    terms: list[str] = field(default_factory=list)
    index: TermIndex = field(default_factory=TermIndex)
    patterns: list[tuple[str, regex.Pattern[str]]] = field(default_factory=list)


@dataclass
class AuditPolicy:
    """The prompt-audit rules of one node, validated."""

    groups: list[_Group]
    allow: TermIndex
    max_level: int
    timeout: float

    @classmethod
    def from_settings(cls, settings: ModerationSettings, where: str = "plugins.moderation") -> AuditPolicy:
        groups = []
        for name in (*TERM_GROUPS, "blocked_patterns"):
            entries: list[str] = getattr(settings, name)
            if len(entries) > MAX_TERMS:
                raise ConfigError(f"{where}.{name}: at most {MAX_TERMS} entries")
            group = _Group(name)
            for entry in entries:
                if name == "blocked_patterns" or entry.startswith(PATTERN_PREFIX):
                    text = entry[len(PATTERN_PREFIX):] if entry.startswith(PATTERN_PREFIX) else entry
                    group.patterns.append((text, check_pattern(text, f"{where}.{name}")))
                    continue
                if len(entry) > MAX_TERM_CHARS:
                    raise ConfigError(f"{where}.{name}: the term {entry[:40]!r}... is longer than "
                                      f"{MAX_TERM_CHARS} characters")
                try:
                    words, prefix = term_words(entry)
                except ValueError:
                    raise ConfigError(f"{where}.{name}: the term {entry!r} has no letters or digits") from None
                group.index.add(words, prefix, len(group.terms))
                group.terms.append(entry)
            groups.append(group)
        if len(settings.allow) > MAX_TERMS:
            raise ConfigError(f"{where}.allow: at most {MAX_TERMS} entries")
        allow = TermIndex()
        for i, phrase in enumerate(settings.allow):
            try:
                allow.add(*term_words(phrase), i)
            except ValueError:
                raise ConfigError(f"{where}.allow: the phrase {phrase!r} has no letters or digits") from None
        return cls(groups=groups, allow=allow, max_level=LEVELS[settings.max_generation_level],
                   timeout=settings.pattern_timeout_ms / 1000)

    @classmethod
    def from_table(cls, table: dict[str, Any], where: str = "plugins.moderation") -> AuditPolicy:
        """Validate a raw `[plugins.moderation]` table (ConfigError naming the bad key or pattern)."""
        return cls.from_settings(parse_table(ModerationSettings, table, where), where)

    def check(self, prompt: str) -> list[AuditViolation]:
        """Every rule group the prompt breaks (at most one violation per group, the first match)."""
        texts = [self.allow.remove(text) for text in views(prompt)]
        found: list[AuditViolation] = []
        for group in self.groups:
            violation = self._first(group, texts)
            if violation is not None:
                found.append(violation)
        return found

    def _first(self, group: _Group, texts: Sequence[str]) -> AuditViolation | None:
        label = GROUP_NAMES[group.name]
        for text in texts:
            hit = group.index.search(text)
            if hit is not None:
                term, matched = group.terms[hit[0]], hit[1]
                return AuditViolation(group.name, term, matched,
                                      f"the prompt contains {matched!r}, which this node's "
                                      f"{label} rule blocks (term {term!r})")
            for source, pattern in group.patterns:
                try:
                    match = pattern.search(text, timeout=self.timeout)
                except TimeoutError:
                    log.warning("prompt audit: pattern %r of %s ran out of time; the prompt is refused",
                                source, group.name)
                    return AuditViolation(group.name, source, "",
                                          f"this node's {label} pattern {source!r} could not finish checking "
                                          "the prompt in time; shorten or rephrase the prompt")
                if match is not None:
                    return AuditViolation(group.name, source, match.group(0),
                                          f"the prompt contains {match.group(0)!r}, which this node's "
                                          f"{label} rule blocks (pattern {source!r})")
        return None

    def check_level(self, level: Any) -> AuditViolation | None:
        """A violation when a requested content level is above `max_generation_level`."""
        if isinstance(level, str):
            level = LEVELS.get(level.strip().upper().replace("PG13", "PG-13"), level)
        if not isinstance(level, int) or isinstance(level, bool) or level <= self.max_level:
            return None
        names = {v: k for k, v in LEVELS.items()}
        allowed = names.get(self.max_level, str(self.max_level))
        return AuditViolation("max_generation_level", names.get(level, str(level)), "",
                              f"this node generates images up to {allowed}; "
                              f"{names.get(level, str(level))} was asked for")


def check_prompt(policy: AuditPolicy, prompt: str, level: Any = None) -> list[AuditViolation]:
    """The violations of a prompt (and of a requested level, when one is given)."""
    found = policy.check(prompt)
    over = policy.check_level(level) if level is not None else None
    return found + ([over] if over is not None else [])


def describe(violations: Iterable[AuditViolation]) -> str:
    """One line naming each rule and what caught it."""
    return "; ".join(f"{v.rule}: {v.message}" for v in violations)


__all__ = ["AuditPolicy", "AuditViolation", "ModerationSettings", "TermIndex", "check_pattern", "check_prompt",
           "describe", "fold", "term_words", "views"]
