"""Acceptance tests in a real browser: Debian's chromium driven by Playwright for Python.

The node runs in-process (the `api` fixture) on 127.0.0.1; chromium is launched from /usr/bin/chromium
(Playwright's own browser downloads are never used). Each test saves screenshots in its tmp_path.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from node.core.tables import Role
from tests.catalog_fixtures import A1111_PARAMETERS, png_with_parameters, safetensors_bytes
from tests.conftest import Api, require_debian_tool
from tests.test_catalog import Creator

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PASSWORD = "correct horse battery"
HOSTILE = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">'
TIMEOUT_MS = 15_000



@pytest.fixture(autouse=True)
def chromium_installed() -> None:
    require_debian_tool(str(CHROMIUM), "chromium")


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def page(browser: Any, tmp_path: Path) -> AsyncIterator[Any]:
    context = await browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: errors.append(f"dialog: {dialog.message}"))
    try:
        yield page
    finally:
        await page.screenshot(path=str(tmp_path / "final.png"), full_page=True)
        await context.close()
    assert errors == [], errors


def base(api: Api) -> str:
    return str(api.client.make_url("/")).rstrip("/")


def autov3(data: bytes) -> str:
    header_length = struct.unpack("<Q", data[:8])[0]
    return hashlib.sha256(data[8 + header_length:]).hexdigest()[:12]


async def sign_in(page: Any, api: Api, username: str) -> None:
    await page.goto(base(api) + "/signin")
    await page.fill("#username", username)
    await page.fill("#password", PASSWORD)
    await page.click("form.stack button[type=submit]")
    await page.wait_for_url(re.compile(r".*/$"))


async def test_a_creator_publishes_and_a_visitor_finds_reads_and_downloads(api: Api, page: Any,
                                                                           tmp_path: Path) -> None:
    await api.user("maker", Role.CREATOR, password=PASSWORD)
    data = safetensors_bytes(seed=7)
    png = png_with_parameters(A1111_PARAMETERS.format(model_hash="6ce0161689", lora_hash=autov3(data))
                              .replace("a cat in a hat", "a glass cat on a windowsill"), size=(96, 64))

    await sign_in(page, api, "maker")
    await page.click("nav >> text=Publish")
    await page.fill("#m-name", "Glass Cats")
    await page.fill("#m-description", "Cats made of glass.\nA test model.")
    await page.fill("#m-tags", "cats, glass")
    await page.fill("#v-words", "glasscat")
    await page.click("text=Create draft")
    await page.wait_for_url(re.compile(r".*/publish/\d+$"))

    await page.set_input_files("#model-file", files=[{"name": "glass_cats.safetensors",
                                                      "mimeType": "application/octet-stream", "buffer": data}])
    await page.click("#upload-button")
    await page.wait_for_selector("#upload-status:has-text('Uploaded glass_cats.safetensors')")
    assert await page.locator("#file-list li.empty").count() == 0
    assert await page.eval_on_selector("#upload-progress", "p => p.value") == 100
    await page.set_input_files("#image-file", files=[{"name": "cat.png", "mimeType": "image/png", "buffer": png}])
    await page.click("#image-button")
    await page.wait_for_selector("#image-status:has-text('with its generation data')")
    await page.screenshot(path=str(tmp_path / "publish.png"), full_page=True)
    await page.click("#publish-button")
    await page.wait_for_url(re.compile(r".*/models/\d+$"))
    model_url = page.url

    # A visitor (signed out) finds it through search.
    await page.click("nav button:has-text('Sign out')")
    await page.wait_for_url(re.compile(r".*/$"))
    await page.fill("#top-search", "glass cat")
    await page.press("#top-search", "Enter")
    await page.wait_for_url(re.compile(r".*/models\?query=glass\+cat"))
    await page.click("#results >> text=Glass Cats")
    await page.wait_for_url(model_url)
    assert await page.inner_text("#model-name") == "Glass Cats"
    assert "glasscat" in await page.inner_text(".words")
    await page.click("button.copy[data-copy='word-1']")
    await page.wait_for_selector("button.copy[data-copy='word-1']:has-text('Copied')")

    # The image page shows how the image was made, and links back to the model.
    await page.click("#gallery a >> nth=0")
    await page.wait_for_url(re.compile(r".*/images/\d+$"))
    assert await page.inner_text("#prompt") == "a glass cat on a windowsill, masterpiece <lora:catstyle:0.8>"
    assert "Negative prompt: blurry, lowres" in await page.inner_text("#generation-text")
    assert "DPM++ 2M Karras" in await page.inner_text("#settings")
    await page.screenshot(path=str(tmp_path / "image.png"), full_page=True)
    await page.click("#resources >> text=Glass Cats >> nth=0")
    await page.wait_for_url(re.compile(r".*/models/\d+\?version=\d+$"))

    # The download is the file, byte for byte.
    async with page.expect_download() as info:
        await page.click(".file a:has-text('Download')")
    download = await info.value
    assert download.suggested_filename == "glass_cats.safetensors"
    assert Path(await download.path()).read_bytes() == data


async def test_the_browsing_level_hides_an_r_image_from_a_visitor_who_is_not_signed_in(
        api: Api, page: Any, tmp_path: Path) -> None:
    creator = Creator(api, await api.user("maker", Role.CREATOR))
    model, version, file = await creator.published(safetensors_bytes())
    pg = await creator.json("POST", f"/api/node/v1/versions/{version['id']}/images?nsfw_level=1", 201,
                            data=png_with_parameters("a calm lake", color="blue"))
    r = await creator.json("POST", f"/api/node/v1/versions/{version['id']}/images?nsfw_level=4", 201,
                           data=png_with_parameters("something for grown-ups", color="red"))

    await page.goto(base(api) + f"/models/{model['id']}")
    gallery = await page.eval_on_selector_all("#gallery a", "links => links.map(a => a.getAttribute('href'))")
    assert f"/images/{pg['id']}" in gallery and f"/images/{r['id']}" not in gallery
    await page.goto(base(api) + "/")
    assert await page.locator(f"a[href='/images/{r['id']}']").count() == 0
    await page.goto(base(api) + f"/images/{r['id']}")
    assert "Hidden by your browsing level" in await page.inner_text("#hidden-notice")
    assert await page.locator("img.full").count() == 0
    # The level control offers visitors the safe levels only.
    options = await page.eval_on_selector_all("#browsing-level option", "os => os.map(o => o.value)")
    assert options == ["PG", "PG-13"]
    await page.screenshot(path=str(tmp_path / "hidden.png"), full_page=True)


async def test_a_form_without_its_csrf_token_is_refused(api: Api, page: Any, tmp_path: Path) -> None:
    await api.user("maker", Role.CREATOR, password=PASSWORD)
    await page.goto(base(api) + "/signin")
    await page.eval_on_selector("form.stack input[name=csrf_token]", "input => input.remove()")
    await page.fill("#username", "maker")
    await page.fill("#password", PASSWORD)
    await page.click("form.stack button[type=submit]")
    await page.wait_for_selector("#error-message")
    assert "security token is missing or out of date" in await page.inner_text("#error-message")
    await page.screenshot(path=str(tmp_path / "csrf.png"), full_page=True)
    await page.goto(base(api) + "/account")
    assert "/signin" in page.url  # not signed in


async def test_script_and_html_in_names_descriptions_tags_and_prompts_never_run(api: Api, page: Any,
                                                                                tmp_path: Path) -> None:
    creator = Creator(api, await api.user("maker", Role.CREATOR, password=PASSWORD))
    model, version, file = await creator.published(safetensors_bytes(), name="Evil " + HOSTILE,
                                                   description=HOSTILE, tags=["it's"])
    image = await creator.json("POST", f"/api/node/v1/versions/{version['id']}/images", 201,
                               data=png_with_parameters(f"a cat {HOSTILE}\nNegative prompt: {HOSTILE}\n"
                                                        "Steps: 20, Sampler: Euler, Seed: 1"))
    await sign_in(page, api, "maker")
    for path in ("/", f"/models/{model['id']}", f"/images/{image['id']}", "/models?query=evil",
                 "/creators/maker", "/account", f"/publish/{model['id']}"):
        await page.goto(base(api) + path)
        assert await page.evaluate("() => window.pwned") is None, path
        assert await page.evaluate("() => document.querySelectorAll('script:not([src])').length") == 0
    await page.goto(base(api) + f"/models/{model['id']}")
    assert HOSTILE in await page.inner_text("#model-name")  # shown as text
    await page.screenshot(path=str(tmp_path / "escaped.png"), full_page=True)


async def test_pages_fit_a_phone_screen(api: Api, browser: Any, tmp_path: Path) -> None:
    creator = Creator(api, await api.user("maker", Role.CREATOR))
    model, version, file = await creator.published(safetensors_bytes(), name="A model with a rather long name "
                                                   "that must wrap on a small screen")
    await creator.json("POST", f"/api/node/v1/versions/{version['id']}/images", 201,
                       data=png_with_parameters("a cat", size=(512, 512)))
    context = await browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    page = await context.new_page()
    try:
        for name, path in (("home", "/"), ("models", "/models"), ("model", f"/models/{model['id']}")):
            await page.goto(base(api) + path)
            overflow = await page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
            await page.screenshot(path=str(tmp_path / f"phone-{name}.png"), full_page=True)
            assert overflow <= 0, (path, overflow)
    finally:
        await context.close()


async def test_a_member_browsing_at_r_sees_r_images_blurred_until_revealed(api: Api, page: Any,
                                                                           tmp_path: Path) -> None:
    creator = Creator(api, await api.user("maker", Role.CREATOR))
    model, version, file = await creator.published(safetensors_bytes())
    r = await creator.json("POST", f"/api/node/v1/versions/{version['id']}/images?nsfw_level=4", 201,
                           data=png_with_parameters("something for grown-ups", color="red"))
    await api.node.accounts.create_user("grownup", password=PASSWORD)
    await sign_in(page, api, "grownup")
    await page.select_option("#browsing-level", "R")  # applies at once (site.js submits the form)
    await page.wait_for_selector("#browsing-level option[value=R][selected]", state="attached")
    await page.goto(base(api) + f"/models/{model['id']}")
    card = page.locator(f"#gallery li:has(a[href='/images/{r['id']}'])")
    blurred = "el => getComputedStyle(el).filter"
    assert "blur" in await card.locator("img").evaluate(blurred)
    await page.screenshot(path=str(tmp_path / "blurred.png"), full_page=True)
    await card.locator("label.reveal").click()
    assert await card.locator("img").evaluate(blurred) == "none"


async def test_an_upload_cut_off_halfway_resumes_and_stores_the_right_bytes(api: Api, page: Any,
                                                                            tmp_path: Path) -> None:
    await api.user("maker", Role.CREATOR, password=PASSWORD)
    data = safetensors_bytes(seed=3, size=96)  # about 55 KB, sent in 16 KB pieces
    await sign_in(page, api, "maker")
    await page.goto(base(api) + "/publish")
    await page.fill("#m-name", "Resumed")
    await page.click("text=Create draft")
    await page.wait_for_url(re.compile(r".*/publish/\d+$"))
    await page.eval_on_selector("#upload-panel", "panel => panel.setAttribute('data-chunk-bytes', '16384')")
    patches = []

    async def cut_the_second_piece(route: Any) -> None:
        if route.request.method == "PATCH":
            patches.append(route.request.headers.get("upload-offset"))
            if len(patches) == 2:
                await route.abort("connectionreset")
                return
        await route.continue_()

    await page.route("**/api/node/v1/uploads/*", cut_the_second_piece)
    await page.set_input_files("#model-file", files=[{"name": "resumed.safetensors",
                                                      "mimeType": "application/octet-stream", "buffer": data}])
    await page.click("#upload-button")
    await page.wait_for_selector("#upload-status:has-text('Uploaded resumed.safetensors')")
    status = await page.inner_text("#upload-status")
    assert hashlib.sha256(data).hexdigest().upper() in status
    assert patches[1] == patches[2] == "16384"  # the cut piece was sent again from the node's offset
    await page.screenshot(path=str(tmp_path / "resumed.png"), full_page=True)
