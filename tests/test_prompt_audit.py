"""The prompt audit of the moderation plugin: which prompts each rule group catches, and which it lets
through; bad settings stop the node with a message naming the key or pattern."""

from __future__ import annotations

import time
from typing import Any

import pytest

from node.core.errors import ConfigError
from plugins.moderation.audit import AuditPolicy, check_prompt, describe, fold, term_words, views

POLICY = {
    "minors": ["loli*", "child", "young girl", "re:\\b(?:1[0-7]|[1-9])\\s*(?:yo|years?\\s+old)\\b"],
    "real_people": ["Taylor Swift", "Émile Zola"],
    "banned": ["gore"],
    "blocked_terms": ["kid"],
    "blocked_patterns": ["nsfw\\s*=\\s*true"],
    "allow": ["child of light", "kid icarus"],
    "max_generation_level": "R",
}


@pytest.fixture(scope="module")
def policy() -> AuditPolicy:
    return AuditPolicy.from_table(POLICY)


def rules(policy: AuditPolicy, prompt: str) -> list[str]:
    return [v.rule for v in policy.check(prompt)]


@pytest.mark.parametrize("prompt", [
    "a loli in a park", "LOLI", "lolicon art", "Loli, 1girl", "a child playing", "young girl, smiling",
    "young_girl", "young-girl", "young,  girl", "portrait of a 12 yo", "she is 9 years old",
])
def test_minors_terms_catch_their_phrasings(policy: AuditPolicy, prompt: str) -> None:
    assert rules(policy, prompt) == ["minors"]


@pytest.mark.parametrize("prompt", [
    "l0li", "1oli", "l o l i", "l.o.l.i", "l_o_l_i", "c h i l d", "ch\u200bild", "chi\u00adld", "ＬＯＬＩ",
    "lolí", "CHILD",
])
def test_simple_obfuscations_are_read_through(policy: AuditPolicy, prompt: str) -> None:
    assert rules(policy, prompt) == ["minors"], views(prompt)


@pytest.mark.parametrize("prompt", [
    "childhood memories",  # "child" is a whole word only
    "a kidney bean", "skidding car", "a landscape at dusk", "1girl, 2boys, 1990s fashion",
    "an adult woman, 25 years old", "goreng noodles", "golden hour, 4k, 8k",
])
def test_innocent_prompts_pass(policy: AuditPolicy, prompt: str) -> None:
    assert rules(policy, prompt) == []


def test_allowed_phrases_never_trigger_but_the_rest_of_the_prompt_still_counts(policy: AuditPolicy) -> None:
    assert rules(policy, "Child of Light, watercolor") == []
    assert rules(policy, "kid icarus fan art") == []
    assert rules(policy, "child of light and a child") == ["minors"]
    assert rules(policy, "kid icarus with a kid") == ["blocked_terms"]


def test_each_violation_names_its_group_and_the_term_that_caught_it(policy: AuditPolicy) -> None:
    found = policy.check("taylor  swift in the gore of battle, a kid")
    assert [(v.rule, v.term, v.matched) for v in found] == [
        ("real_people", "Taylor Swift", "taylor  swift"), ("banned", "gore", "gore"),
        ("blocked_terms", "kid", "kid")]
    assert "real people rule" in found[0].message and "'Taylor Swift'" in found[0].message
    assert describe(found).startswith("real_people: the prompt contains 'taylor  swift'")


def test_unicode_names_match_with_or_without_accents(policy: AuditPolicy) -> None:
    assert rules(policy, "a portrait of Emile Zola") == ["real_people"]
    assert rules(policy, "a portrait of ÉMILE ZOLA") == ["real_people"]
    assert rules(policy, "a portrait of E\u0301mile Zola") == ["real_people"]  # combining accent


def test_patterns_are_case_insensitive_and_named(policy: AuditPolicy) -> None:
    (violation,) = policy.check("masterpiece, NSFW = True")
    assert violation.rule == "blocked_patterns" and violation.term == "nsfw\\s*=\\s*true"
    assert "pattern" in violation.message


def test_the_generation_level_is_capped(policy: AuditPolicy) -> None:
    assert check_prompt(policy, "a cat", level=4) == []
    assert check_prompt(policy, "a cat", level="PG-13") == []
    (over,) = check_prompt(policy, "a cat", level="X")
    assert over.rule == "max_generation_level" and "up to R" in over.message and "X was asked for" in over.message
    assert [v.rule for v in check_prompt(policy, "a loli", level=16)] == ["minors", "max_generation_level"]


def test_an_empty_policy_allows_everything() -> None:
    assert AuditPolicy.from_table({}).check("anything at all, loli, gore") == []


@pytest.mark.parametrize("table, message", [
    ({"blocked_patterns": ["a(b"]}, "'a(b' is not a valid regular expression"),
    ({"blocked_patterns": ["(a+)+$"]}, "repeats a group that itself repeats"),
    ({"blocked_patterns": ["(\\w*\\s?)*x"]}, "repeats a group that itself repeats"),
    ({"minors": ["re:(x{2,})+"]}, "plugins.moderation.minors: the pattern '(x{2,})+'"),
    ({"blocked_patterns": ["a" * 301]}, "longer than 300 characters"),
    ({"blocked_patterns": [" "]}, "empty pattern"),
    ({"banned": ["!!!"]}, "has no letters or digits"),
    ({"allow": ["--"]}, "plugins.moderation.allow"),
    ({"max_generation_level": "NC-17"}, "plugins.moderation.max_generation_level: must be one of"),
    ({"minors": "loli"}, "plugins.moderation.minors: expected a list of strings"),
    ({"minor": ["loli"]}, "plugins.moderation.minor: unknown key"),
])
def test_bad_settings_are_refused_naming_the_key_and_pattern(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        AuditPolicy.from_table(table)
    assert message in caught.value.detail


def test_a_slow_pattern_is_stopped_and_the_prompt_refused() -> None:
    # No nested repetition, so it passes the startup check, but the back-references make it crawl.
    policy = AuditPolicy.from_table({"blocked_patterns": ["(a+)\\1*\\1*\\1*x"], "pattern_timeout_ms": 20})
    started = time.monotonic()
    (violation,) = policy.check("a" * 5000 + "c")
    assert time.monotonic() - started < 3.0  # unbounded, it runs for minutes
    assert violation.rule == "blocked_patterns" and "could not finish" in violation.message


def test_terms_are_normalized_into_words() -> None:
    assert fold("ÉCOLE\u200b") == "ecole"
    assert term_words("Young_Girl") == (("young", "girl"), False)
    assert term_words("loli*") == (("loli",), True)
    with pytest.raises(ValueError):
        term_words("***")


def test_a_thousand_terms_check_a_long_prompt_in_milliseconds() -> None:
    policy = AuditPolicy.from_table({"banned": [f"word{i}" for i in range(1000)]})
    prompt = "masterpiece, best quality, " * 40
    started = time.perf_counter()
    for _ in range(10):
        assert policy.check(prompt) == []
    per_prompt = (time.perf_counter() - started) / 10
    assert per_prompt < 0.05, f"{per_prompt * 1000:.1f} ms per prompt"


def test_a_phrase_with_a_prefix_word_and_overlapping_allowed_phrases() -> None:
    policy = AuditPolicy.from_table({"banned": ["bloody mess*"], "allow": ["bloody messiah", "messiah"]})
    assert [v.matched for v in policy.check("a bloody messy room")] == ["bloody messy"]
    assert policy.check("the bloody messiah painting") == []


async def test_the_plugin_refuses_to_start_with_a_bad_pattern(tmp_path: Any) -> None:
    from node.core.plugins import PluginHost
    from node.core.runtime import open_node
    from tests.conftest import make_config, write_node

    config = make_config(write_node(tmp_path / "node"), plugins={"enabled": ["moderation"],
                                                                 "moderation": {"blocked_patterns": ["(a+)+"]}})
    host = PluginHost(["moderation"])
    host.load(strict=True)
    with pytest.raises(ConfigError) as caught:
        async with open_node(config, migrate=True, plugins=host):
            pass
    assert "plugins.moderation.blocked_patterns: the pattern '(a+)+'" in caught.value.detail
    good = make_config(tmp_path / "node", plugins={"enabled": ["moderation"], "moderation": {"banned": ["gore"]}})
    async with open_node(good, migrate=True, plugins=host):
        import plugins.moderation as plugin

        assert [v.rule for v in plugin.policy.check("gore")] == ["banned"]


async def test_the_check_prompt_hook_answers_violations_naming_the_rule() -> None:
    from node.core.moderation import CheckContext, Violation
    from node.core.plugins import PluginHost

    import plugins.moderation as plugin

    host = PluginHost(["moderation"])
    host.load(strict=True)
    saved = plugin.policy
    plugin.policy = AuditPolicy.from_table(POLICY)
    try:
        context = CheckContext(user=None, purpose="generate", request={"prompt": "x"})
        (found,) = await host.call("atrium_check_prompt", prompt="a l0li in a park", negative="child",
                                   context=context)
        assert found == [Violation(rule="minors", message=found[0].message)]
        assert "'loli'" in found[0].message
        assert await host.call("atrium_check_prompt", prompt="a cat", negative="child, loli",
                               context=context) == [[]]
        over = CheckContext(user=None, purpose="generate", request={"nsfw_level": 16})
        (found,) = await host.call("atrium_check_prompt", prompt="a cat", negative="", context=over)
        assert [v.rule for v in found] == ["max_generation_level"]
    finally:
        plugin.policy = saved


async def test_the_check_image_hook_labels_generated_images_and_refuses_levels_above_the_cap(
        tmp_path: Any) -> None:
    from PIL import Image as PILImage

    from node.core.config import ModerationSection
    from node.core.moderation import CheckContext, ImageLabel, Violation
    from node.core.plugins import PluginHost
    from node.core.scoring import load_scorer

    import plugins.moderation as plugin

    host = PluginHost(["moderation"])
    host.load(strict=True)
    saved = plugin.policy, plugin.scorer
    image = PILImage.new("RGB", (96, 96), "orange")
    context = CheckContext(user=None, purpose="generate")
    try:
        plugin.policy = AuditPolicy.from_table({"max_generation_level": "R"})
        plugin.scorer = None
        assert await host.call("atrium_check_image", image=image, metadata={}, context=context) == [[]]
        plugin.scorer = load_scorer(ModerationSection(image_scorer="opennsfw"))
        (found,) = await host.call("atrium_check_image", image=image, metadata={}, context=context)
        assert [type(f) for f in found] == [ImageLabel] and found[0].name == "nsfw" and found[0].score < 0.2
        plugin.scorer.x_at = 0.0  # every image now scores as X, above R
        (found,) = await host.call("atrium_check_image", image=image, metadata={}, context=context)
        violation = next(f for f in found if isinstance(f, Violation))
        assert violation.rule == "max_generation_level" and "scores as X" in violation.message
    finally:
        plugin.policy, plugin.scorer = saved
