"""SQLite (FTS5) and PostgreSQL (tsvector) find the same models, in the same order, for the same data.

One catalog of varied models is built through the domain layer on each backend; then every query of a
matrix (words, prefixes, unicode, query-syntax characters, each filter, each sort, cursor walks and
pages) runs on both, and the answers, as model names in order, must be equal.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from node.core.catalog import VersionChanges
from node.core.errors import InvalidInput
from node.core.plugins import PluginHost
from node.core.runtime import Node, open_node
from node.core.search import ModelQuery, find_models
from node.core.tables import Model, Role, utcnow
from node.core.vocabulary import ModelSort, ModelStatus, Period
from tests.catalog_fixtures import safetensors_bytes
from tests.conftest import create_pg_database, drop_pg_database, make_config, write_node

CREATORS = ["alice", "bob_smith", "carol.w", "dmitri"]
TYPES = ["LORA", "Checkpoint", "TextualInversion", "LoCon", "VAE"]
BASE_MODELS = ["SD 1.5", "SDXL 1.0", "Pony", "Flux.1 D"]
LEVELS = [1, 2, 4, 8, 16]
USES = [[], ["Image"], ["Image", "Rent"], ["Image", "RentCivit", "Rent", "Sell"], ["Sell"]]
# (name, tags, trained words, description): the text the search document is made of.
TEXTS: list[tuple[str, list[str], list[str], str]] = [
    ("Watercolor Cats", ["cats", "watercolor"], ["wcat"], "<p>Soft watercolor cats on paper.</p>"),
    ("Watercolour Dogs", ["dogs", "watercolor"], ["wdog"], "Dogs, painted wet on wet."),
    ("Neon City", ["city", "neon"], ["neoncity"], "Night streets and signs."),
    ("City Neon Lights", ["city"], [], "Neon lights in a rainy city."),
    ("Café Racer", ["motorbike", "vintage"], ["caferacer"], "A café racer motorbike."),
    ("Cafe Society", ["people"], [], "Paris cafe, 1920s."),
    ("Naïve Art", ["art", "folk"], ["naive style"], "Naïve paintings of villages."),
    ("Über-Cute Mascots", ["cute", "mascot"], ["ubercute"], "Über cute mascots for brands."),
    ("Straße Fotos", ["street"], [], "Fotos einer Straße."),
    ("猫スタイル", ["anime", "cats"], ["猫"], "日本のアニメ風の猫"),
    ("Ωmega Fighters", ["anime"], ["omega"], "Greek letters: Ω, α, β."),
    ("Anime Eyes 2.5D", ["anime", "eyes"], ["animeeyes"], "Half 2D, half 3D: 2.5D."),
    ("Realistic Vision v1.5", ["realistic", "photo"], ["rv15"], "Version 1.5 of the realistic model."),
    ("SDXL-Turbo Portraits", ["portrait"], ["turboportrait"], "Fast SDXL-1.0 portraits."),
    ("foo_bar Utility", ["utility"], ["foo_bar"], "Utility for foo_bar prompts."),
    ("Don't Panic", ["text"], ["dontpanic"], "Don't panic; it's only a towel."),
    ("C++ Logos", ["logo", "c++"], ["cpplogo"], "Logos for C++ and C# projects."),
    ("Mirror of civitai.com/models", ["mirror"], [], "See civitai.com/models/123 and mail x@y.org."),
    ("100% Pixel Art", ["pixel art", "8-bit"], ["pixelart"], "100% pixels, 0% blur."),
    ("Quoted \"Style\"", ["quotes"], ["quotestyle"], "Uses \"quotes\" and 'apostrophes'."),
    ("Stars * and Colons: A Study", ["study"], [], "Asterisks * colons : carets ^ and (parentheses)."),
    ("AND OR NOT NEAR", ["keywords"], [], "FTS keywords as plain words: AND, OR, NOT, NEAR."),
    ("Cat Ears", ["cats", "ears"], ["catears"], "Cat ears for any character."),
    ("Catalog Covers", ["books"], [], "Covers for a catalog of books."),
    ("Category Icons", ["icons"], [], "Icons by category."),
    ("Dog Ears", ["dogs", "ears"], ["dogears"], "Dog ears, floppy."),
    ("Landscape Painter", ["landscape"], ["lscape"], "Mountains, lakes and forests."),
    ("Portrait Master", ["portrait"], ["pmaster"], "Studio portrait lighting."),
    ("Cyberpunk 2077 Style", ["cyberpunk", "city"], ["cyber2077"], "Chrome and neon, year 2077."),
    ("Émile's Brushes", ["brushes"], ["emile"], "Émile Zola never painted these."),
    ("İstanbul Nights", ["city"], ["istanbul"], "İstanbul by night."),
    ("Ångström Detail", ["detail"], ["angstrom"], "Detail at the ångström scale."),
    ("Tiny Tensors", ["utility"], ["tiny"], "A very small test model."),
    ("Paper Cutouts", ["paper", "craft"], ["papercut"], "Layered paper cut-outs."),
    ("Stained Glass", ["glass"], ["stainedglass"], "Church windows, stained glass."),
    ("Glassmorphism UI", ["ui", "glass"], ["glassui"], "Frosted glass user interfaces."),
    ("Ink Wash", ["ink", "watercolor"], ["inkwash"], "Sumi-e ink wash painting."),
    ("Low Poly", ["3d"], ["lowpoly"], "Low-poly 3D renders."),
    ("Claymation", ["clay", "3d"], ["clay"], "Stop-motion clay figures."),
    ("Retro Futurism", ["retro"], ["retrofuture"], "The future as seen in 1960."),
    ("Oil Portraits", ["portrait", "oil"], ["oilport"], "Oil on canvas portraits."),
    ("Koi Pond", ["fish", "water"], ["koi"], "Koi fish in a water garden."),
    ("Waterfalls", ["water", "landscape"], ["waterfall"], "Waterfalls of Iceland."),
    ("Underwater", ["water"], ["underwater"], "Under the water surface."),
    ("Cats and Dogs", ["cats", "dogs"], ["catdog"], "Cats and dogs together."),
    ("Draft Only Cats", ["cats"], [], "This one stays a draft."),
    ("Deleted Cats", ["cats"], [], "This one is deleted."),
]
DRAFT, DELETED = "Draft Only Cats", "Deleted Cats"
# Days before now each model was published: spans every Civitai period, with ties on the same day.
AGES_DAYS = [0.2, 0.2, 3, 3, 20, 20, 200, 200, 800]


@dataclass
class Catalogs:
    """Both backends, with `run` answering a query on each as lists of model names."""

    loop: asyncio.AbstractEventLoop
    nodes: dict[str, Node]

    def run(self, q: ModelQuery) -> dict[str, Any]:
        return {name: self.loop.run_until_complete(answer(node, replace(q))) for name, node in self.nodes.items()}

    def walk(self, q: ModelQuery) -> dict[str, Any]:
        return {name: self.loop.run_until_complete(walk(node, q)) for name, node in self.nodes.items()}


async def names_of(node: Node, ids: list[int]) -> list[str]:
    async with node.db.session() as session:
        rows = (await session.exec(sa.select(Model.id, Model.name).where(Model.id.in_(ids)))).all()  # type: ignore[attr-defined]
    names = dict(rows)
    return [names[i] for i in ids]


async def answer(node: Node, q: ModelQuery) -> Any:
    """The names of one page (with its total in page mode), or the error a bad query gets."""
    try:
        page = await find_models(node.db, q)
    except InvalidInput as err:
        return ("error", type(err).__name__, str(err))
    return (await names_of(node, page.ids), page.total, page.next_cursor is not None)


async def walk(node: Node, q: ModelQuery) -> list[str]:
    """Every model a cursor walk visits, page after page."""
    seen: list[str] = []
    cursor = None
    for _ in range(100):
        page = await find_models(node.db, replace(q, cursor=cursor))
        seen += await names_of(node, page.ids)
        cursor = page.next_cursor
        if cursor is None:
            return seen
    raise AssertionError("the cursor walk did not end")


async def build(node: Node) -> None:
    """The catalog: creators, models with a file each, published (but one draft and one deleted), counters."""
    users = [await node.accounts.create_user(name, role=Role.CREATOR) for name in CREATORS]
    data = safetensors_bytes(tensors=1, size=8)
    now = utcnow()
    for i, (name, tags, words, description) in enumerate(TEXTS):
        owner = users[i % len(users)]
        model = await node.catalog.create_model(
            owner, name=name, type=TYPES[i % len(TYPES)], description=description, tags=tags,
            nsfw_level=LEVELS[i % len(LEVELS)], allow_no_credit=i % 2 == 0, allow_derivatives=i % 3 != 0,
            allow_different_license=i % 4 == 0, allow_commercial_use=USES[i % len(USES)])
        version = await node.catalog.create_version(owner, model.id, VersionChanges(  # type: ignore[arg-type]
            name="v1", base_model=BASE_MODELS[i % len(BASE_MODELS)], trained_words=words))
        upload = await node.ingest.start(owner, version.id, filename="m.safetensors", size=len(data))  # type: ignore[arg-type]

        async def pieces() -> AsyncIterator[bytes]:
            yield data

        await node.ingest.append(owner, upload.id, 0, pieces())
        if name != DRAFT:
            await node.catalog.set_status(owner, model.id, ModelStatus.PUBLISHED)  # type: ignore[arg-type]
        if name == DELETED:
            await node.catalog.set_status(owner, model.id, ModelStatus.DELETED)  # type: ignore[arg-type]
        # Counters with many ties, so that every sort also leans on its id tie-break.
        async with node.db.session() as session:
            row = await session.get(Model, model.id)
            row.download_count = (i * 37) % 11
            row.like_count = (i * 13) % 7
            row.comment_count = i % 5
            row.image_count = i % 4
            row.rating_count = i % 3
            row.rating_sum = (i % 3) * (i % 5 + 1)
            if row.published_at is not None:
                row.published_at = now - timedelta(days=AGES_DAYS[i % len(AGES_DAYS)])
            session.add(row)
            await session.commit()


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalogs]:
    """The same catalog on SQLite and on a throwaway PostgreSQL database (dropped afterwards)."""
    loop = asyncio.new_event_loop()
    root: Path = tmp_path_factory.mktemp("search")
    pg_url = loop.run_until_complete(create_pg_database())
    stack: list[Any] = []
    try:
        nodes: dict[str, Node] = {}
        for name, url in (("sqlite", f"sqlite:///{root / 'search.db'}"), ("postgresql", pg_url)):
            config = make_config(write_node(root / name), database={"url": url})
            opened = open_node(config, migrate=True, plugins=PluginHost([], available={}))
            nodes[name] = loop.run_until_complete(opened.__aenter__())
            stack.append(opened)
            loop.run_until_complete(build(nodes[name]))
        yield Catalogs(loop=loop, nodes=nodes)
    finally:
        for opened in reversed(stack):
            loop.run_until_complete(opened.__aexit__(None, None, None))
        loop.run_until_complete(drop_pg_database(pg_url))
        loop.close()


def same(catalogs: Catalogs, q: ModelQuery) -> Any:
    results = catalogs.run(q)
    assert results["sqlite"] == results["postgresql"], q
    return results["sqlite"]


WORD_QUERIES = [
    # words, case, several words in any order, the last word as a prefix
    "cats", "CATS", "cat", "ca", "c", "watercolor", "water", "neon city", "city neon", "neo ci", "city ne",
    "dog ears", "ears dog", "alice", "bob_smith", "carol", "wcat", "naive style", "nothing matches this",
    # unicode and accents
    "café", "cafe", "CAFÉ", "naïve", "naive", "über", "uber", "straße", "猫スタイル", "猫", "ωmega", "Ω",
    "émile", "emile", "ångström", "angstrom", "istanbul", "İstanbul",
    # characters that mean something to FTS5 or to_tsquery
    '"cats"', "cat*", "cat:*", "(cats)", "cats^2", "-cats", "cats -dogs", "cats & dogs", "cats | dogs",
    "cats <-> dogs", "!cats", "cats)", "'", "*", "()", '""', ":", "^", "-", "&", "|", "'cats'", "don't",
    "dont", "a:b", "NEAR", "near", "AND", "cats OR dogs", "NOT cats", "c++", "c#", "100%", "x@y.org",
    "civitai.com", "civitai", "models/123", "v1.5", "v1", "1.5", "2.5d", "2.5", "sdxl-1.0", "sdxl", "turbo",
    "foo_bar", "foo", "bar", "p", "cut-outs", "cut", "low-poly", "8-bit", "sumi-e", "2077",
    # too many words (only the first twelve count)
    "cats " * 13 + "zebra", "a b c d e f g h i j k l m n",
]


# Queries whose words the two tokenizers would split differently if documents were indexed as
# written (accents, hosts, e-mail addresses, paths, versions, decimals): normalising documents and
# queries in Python (node.core.search.search_words) makes both backends see the same words.
@pytest.mark.parametrize("text", WORD_QUERIES)
def test_a_text_query_finds_the_same_models_on_both_backends(catalogs: Catalogs, text: str) -> None:
    same(catalogs, ModelQuery(query=text, sort=ModelSort.OLDEST))


FILTERS = {
    "tag": dict(tag="cats"), "tag in capitals and spaces": dict(tag="  PIXEL   art "), "tag unknown": dict(tag="x"),
    "one type": dict(types=["LORA"]), "two types": dict(types=["LORA", "Checkpoint"]),
    "base model": dict(base_models=["SDXL 1.0"]), "two base models": dict(base_models=["Pony", "SD 1.5"]),
    "username": dict(username="alice"), "username in capitals": dict(username="BOB_SMITH"),
    "safe only": dict(nsfw=False), "nsfw too": dict(nsfw=True), "browsing level R": dict(browsing_level=4),
    "no credit needed": dict(allow_no_credit=True), "credit needed": dict(allow_no_credit=False),
    "derivatives": dict(allow_derivatives=True), "no derivatives": dict(allow_derivatives=False),
    "different licence": dict(allow_different_license=True),
    "commercial image use": dict(allow_commercial_use=["Image"]),
    "commercial rent or sell": dict(allow_commercial_use=["Rent", "Sell"]),
    "no commercial use": dict(allow_commercial_use=["None"]),
    "ids": dict(ids=[1, 3, 5, 7, 46, 47, 999]),
    "period day": dict(period=Period.DAY), "period week": dict(period=Period.WEEK),
    "period month": dict(period=Period.MONTH), "period year": dict(period=Period.YEAR),
    "query and filters": dict(query="cat", types=["LORA", "TextualInversion", "Checkpoint"], nsfw=True,
                              allow_derivatives=True),
}


@pytest.mark.parametrize("name", list(FILTERS))
def test_a_filter_keeps_the_same_models_on_both_backends(catalogs: Catalogs, name: str) -> None:
    same(catalogs, ModelQuery(sort=ModelSort.NEWEST, **FILTERS[name]))


def test_the_filters_are_not_vacuous(catalogs: Catalogs) -> None:
    counts = {name: len(same(catalogs, ModelQuery(sort=ModelSort.NEWEST, **f))[0]) for name, f in FILTERS.items()}
    everything = len(same(catalogs, ModelQuery())[0])
    assert everything == len(TEXTS) - 2  # the draft and the deleted model are never found
    # nsfw=true lets mature models in beside the others: with every level shown, it keeps them all.
    assert [name for name, n in counts.items() if not 0 < n < everything] == ["tag unknown", "nsfw too"]


@pytest.mark.parametrize("sort", list(ModelSort))
def test_each_sort_orders_the_same_on_both_backends(catalogs: Catalogs, sort: ModelSort) -> None:
    names, _total, _more = same(catalogs, ModelQuery(sort=sort))
    assert len(names) == len(TEXTS) - 2


@pytest.mark.parametrize("sort, query", list(itertools.product(ModelSort, [None, "water", "c"])))
def test_cursor_walks_visit_the_same_models_in_the_same_order(catalogs: Catalogs, sort: ModelSort,
                                                              query: str | None) -> None:
    walks = catalogs.walk(ModelQuery(sort=sort, query=query, limit=4))
    assert walks["sqlite"] == walks["postgresql"]
    whole, _total, _more = same(catalogs, ModelQuery(sort=sort, query=query))
    assert walks["sqlite"] == whole  # a walk sees each model once, in the order of one big page


@pytest.mark.parametrize("page", [1, 2, 5, 12, 13])
def test_pages_and_totals_are_the_same_on_both_backends(catalogs: Catalogs, page: int) -> None:
    names, total, _more = same(catalogs, ModelQuery(sort=ModelSort.MOST_DOWNLOADED, page=page, limit=4))
    assert total == len(TEXTS) - 2 and len(names) == (4 if page < 12 else (1 if page == 12 else 0))


def test_bad_cursors_and_page_caps_are_refused_alike(catalogs: Catalogs) -> None:
    for q in (ModelQuery(cursor="not-a-cursor"), ModelQuery(page=11, limit=100), ModelQuery(limit=0)):
        assert same(catalogs, q)[0] == "error"
