"""The pure parts of buildpack builds (buildpacks/slug.py), the buildpacks' own bin/detect and
bin/release scripts run with bash on temporary directories, and the static buildpack's server
answering real HTTP requests on a loopback port."""

from __future__ import annotations

import http.server
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth.buildpacks import slug
from berth.buildpacks.dockerfile import BuildError, parse_procfile
from berth.buildpacks.slug import (
    DETECT_ORDER,
    ReleaseInfo,
    apply_slugignore,
    choose_buildpacks,
    detect_from_names,
    merge_process_types,
    parse_buildpacks_file,
    parse_release,
    resolve_buildpack,
    slugignore_matcher,
)
from berth.buildpacks.static import server

BUILDPACKS = Path(slug.__file__).resolve().parent


def detect(app: Path) -> tuple[str, str] | None:
    """What lib/build.sh does without BERTH_BUILDPACKS: the first buildpack whose bin/detect
    accepts the directory, in DETECT_ORDER, with the name it prints."""
    for name in DETECT_ORDER:
        done = subprocess.run(
            ["bash", str(BUILDPACKS / name / "bin" / "detect"), str(app)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0:
            return name, done.stdout.strip()
    return None


def app_with(tmp_path: Path, *names: str) -> Path:
    app = tmp_path / "app"
    app.mkdir()
    for name in names:
        (app / name).write_text("{}\n" if name.endswith(".json") else "x\n")
    return app


@pytest.mark.parametrize(
    ("files", "found"),
    [
        (("requirements.txt",), ("python", "Python")),
        (("pyproject.toml",), ("python", "Python")),
        (("package.json", "requirements.txt", "Procfile"), ("python", "Python")),
        (("package.json", "go.mod", "index.html"), ("nodejs", "Node.js")),
        (("go.mod", "index.html", "Procfile"), ("go", "Go")),
        (("index.html", "Procfile"), ("static", "Static site")),
        (("static.json",), ("static", "Static site")),
        (("Procfile",), ("procfile", "Procfile")),
        (("README", "setup.cfg"), None),
    ],
)
def test_detection_follows_the_order(
    tmp_path: Path, files: tuple[str, ...], found: tuple[str, str] | None
) -> None:
    assert DETECT_ORDER == ("python", "nodejs", "go", "static", "procfile")
    assert detect(app_with(tmp_path, *files)) == found
    # the builder's early check (no container needed) agrees with the scripts
    assert detect_from_names(set(files)) == (found[0] if found else None)


def test_build_script_and_every_buildpack_have_the_api_files() -> None:
    for name in DETECT_ORDER:
        for script in ("detect", "compile", "release"):
            path = BUILDPACKS / name / "bin" / script
            assert path.is_file(), path
            assert path.stat().st_mode & 0o111, f"{path} is not executable"
            syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, check=False)
            assert syntax.returncode == 0, syntax.stderr
    for script in ("build.sh", "launch.sh", "common.sh"):
        syntax = subprocess.run(
            ["bash", "-n", str(BUILDPACKS / "lib" / script)], capture_output=True, check=False
        )
        assert syntax.returncode == 0, syntax.stderr


def release_of(name: str, app: Path) -> ReleaseInfo:
    done = subprocess.run(
        ["bash", str(BUILDPACKS / name / "bin" / "release"), str(app)],
        capture_output=True,
        text=True,
        check=True,
    )
    return parse_release(done.stdout)


def test_each_buildpacks_release_parses(tmp_path: Path) -> None:
    app = app_with(tmp_path, "go.mod")
    assert release_of("python", app) == ReleaseInfo()
    assert release_of("procfile", app) == ReleaseInfo()
    assert release_of("static", app).default_process_types == {
        "web": "python3 /app/.berth/static.py"
    }
    (app / "go.mod").write_text("module example.com/some/hello\n\ngo 1.22\n")
    (app / "bin").mkdir()
    (app / "bin" / "hello").write_text("")
    (app / "bin" / "hello").chmod(0o755)
    assert release_of("go", app).default_process_types == {"web": "bin/hello"}


def test_nodejs_release_runs_the_start_script_without_npm(tmp_path: Path) -> None:
    if subprocess.run(["node", "--version"], capture_output=True, check=False).returncode:
        pytest.skip("node is not installed here (the build image has it)")
    app = app_with(tmp_path)
    (app / "package.json").write_text('{"scripts": {"start": "node \\"srv.js\\" --x=1"}}')
    assert release_of("nodejs", app).default_process_types == {"web": 'node "srv.js" --x=1'}
    (app / "package.json").write_text("{}")
    assert release_of("nodejs", app).default_process_types == {}
    (app / "server.js").write_text("")
    assert release_of("nodejs", app).default_process_types == {"web": "node server.js"}


def test_parse_release_reads_heroku_yaml() -> None:
    text = """---
addons:
  - heroku-postgresql
config_vars:
  LANG: en_US.UTF-8
  QUOTED: 'it''s'
default_process_types:
  web: "bundle exec \\"rails\\" server -p $PORT"
  worker: python worker.py # a comment
"""
    assert parse_release(text) == ReleaseInfo(
        default_process_types={
            "web": 'bundle exec "rails" server -p $PORT',
            "worker": "python worker.py",
        },
        config_vars={"LANG": "en_US.UTF-8", "QUOTED": "it's"},
    )
    assert parse_release("") == ReleaseInfo()
    assert parse_release("--- {}\n".replace("--- {}", "---")) == ReleaseInfo()
    assert parse_release("default_process_types: {}\n") == ReleaseInfo()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("default_process_types: web\n", "must be a block"),
        ("  web: x\n", "outside a key"),
        ("default_process_types:\n  web x\n", "expected 'name: value'"),
        ('default_process_types:\n  web: "open\n', "double-quoted"),
        ("just words\n", "expected 'key: value'"),
    ],
)
def test_parse_release_refuses_what_it_cannot_read(text: str, message: str) -> None:
    with pytest.raises(BuildError, match=message):
        parse_release(text)


def test_choosing_buildpacks() -> None:
    assert choose_buildpacks({}, None) == ()
    assert choose_buildpacks({"BUILDPACK_URL": "go"}, "python\n") == ("go",)  # the config wins
    assert choose_buildpacks({}, "# first\npython\n\n heroku/nodejs \nprocfile\n") == (
        "python",
        "nodejs",
        "procfile",
    )
    assert resolve_buildpack("https://github.com/heroku/heroku-buildpack-python", "x") == "python"
    assert (
        resolve_buildpack("https://github.com/heroku/heroku-buildpack-nodejs.git#v250", "x")
        == "nodejs"
    )
    assert resolve_buildpack("heroku/node", "x") == "nodejs"
    with pytest.raises(BuildError, match=r"BUILDPACK_URL: 'https://example.com/bp.git' is not"):
        choose_buildpacks({"BUILDPACK_URL": "https://example.com/bp.git"}, None)
    with pytest.raises(BuildError, match="python, nodejs, go, static, procfile"):
        resolve_buildpack("ruby", "BUILDPACK_URL")
    with pytest.raises(BuildError, match=r"\.buildpacks line 2"):
        parse_buildpacks_file("python\nhttps://github.com/someone/else\n")
    with pytest.raises(BuildError, match="names no buildpack"):
        parse_buildpacks_file("# nothing\n\n")


def test_process_types_from_the_procfile_over_the_defaults() -> None:
    procfile = parse_procfile("web: gunicorn app:app\n# comment\n\nworker: python w.py\n")
    assert merge_process_types(procfile, {"web": "npm start", "other": "x"}) == {
        "web": "gunicorn app:app",
        "worker": "python w.py",
        "other": "x",
    }
    assert merge_process_types({}, {"web": "bin/hello"}) == {"web": "bin/hello"}
    with pytest.raises(BuildError, match="add a Procfile"):
        merge_process_types({}, {})
    assert merge_process_types({"release": "migrate"}, {"web": "x"}) == {
        "web": "x",
        "release": "migrate",
    }
    with pytest.raises(BuildError, match="add a Procfile"):
        merge_process_types({"release": "migrate"}, {})  # a release phase alone runs nothing
    with pytest.raises(BuildError, match="line 1"):
        parse_procfile("web gunicorn\n")


def test_slugignore_patterns() -> None:
    match = slugignore_matcher("# comment\n*.psd\n/docs\nspec/\nassets/raw/*.png\n**/fixtures\n\n")
    assert match("mockup.psd", False)
    assert match("art/deep/mockup.psd", False)
    assert match("docs", True)
    assert match("docs", False)  # anchored, either kind
    assert not match("src/docs", True)  # anchored at the root only
    assert match("spec", True)
    assert match("lib/spec", True)
    assert not match("spec", False)  # a trailing slash: directories only
    assert match("assets/raw/a.png", False)
    assert not match("assets/raw/deep/a.png", False)  # * never crosses /
    assert match("a/b/fixtures", True)
    assert not match("app.py", False)
    with pytest.raises(BuildError, match="negation"):
        slugignore_matcher("!keep.psd\n")


def test_apply_slugignore_removes_what_matches(tmp_path: Path) -> None:
    root = tmp_path / "src"
    for name in ("app.py", "docs/a.txt", "docs/b/c.txt", "x/y.psd", "x/keep.txt", "spec"):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    (root / "link.psd").symlink_to("/etc/passwd")
    removed = apply_slugignore(root, "docs/\n*.psd\nspec/\n")
    assert removed == ["docs", "link.psd", "x/y.psd"]  # `spec` is a file: spec/ spares it
    left = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
    assert left == ["app.py", "spec", "x", "x/keep.txt"]
    assert Path("/etc/passwd").exists()


def test_line_splitter_emits_whole_lines_indented() -> None:
    seen: list[str] = []
    lines = slug._LineSplitter(seen.append)
    lines.feed(b"-----> Python app detected\nCollecting gun")
    assert seen == ["-----> Python app detected"]
    lines.feed(b"icorn\r\n\n !     no luck\rprogress 50%\r")
    lines.feed(b"tail without newline")
    lines.close()
    assert seen == [
        "-----> Python app detected",
        "       Collecting gunicorn",
        " !     no luck",
        "       progress 50%",
        "       tail without newline",
    ]
    assert lines.problem() == "no luck"


# -- the static buildpack's server ------------------------------------------------------------


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    app = tmp_path / "app"
    (app / "public_html" / "blog").mkdir(parents=True)
    (app / "public_html" / "index.html").write_text("home")
    (app / "public_html" / "about.html").write_text("about")
    (app / "public_html" / "blog" / "index.html").write_text("blog")
    (app / "public_html" / "404.html").write_text("custom 404")
    (app / "public_html" / ".secret").write_text("hidden")
    (app / "public_html" / "escape.html").symlink_to(app / "static.json")
    (app / "static.json").write_text(
        '{"clean_urls": true, "error_page": "404.html", "headers": {"/blog/*": {"X-Blog": "yes"}}}'
    )
    config = server.load_config(app)
    handler = type(
        "SiteHandler",
        (server.Handler,),
        {"root": server.site_root(app, config), "config": config, "log_message": _quiet},
    )
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", app
    httpd.shutdown()
    httpd.server_close()
    thread.join(10)


def _quiet(*args: object) -> None:
    return None


def get(url: str) -> tuple[int, str, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def test_static_server_serves_the_root_with_clean_urls_and_hides_dotfiles(
    site: tuple[str, Path],
) -> None:
    url, _ = site
    assert get(url + "/")[:2] == (200, "home")
    assert get(url + "/about")[:2] == (200, "about")  # clean_urls
    assert get(url + "/about.html")[:2] == (200, "about")
    status, body, headers = get(url + "/blog/")
    assert (status, body, headers.get("X-Blog")) == (200, "blog", "yes")
    assert get(url + "/.secret")[:2] == (404, "custom 404")
    assert get(url + "/escape.html")[:2] == (404, "custom 404")  # a symlink out of the root
    assert get(url + "/../static.json")[:2] == (404, "custom 404")
    assert get(url + "/nope")[:2] == (404, "custom 404")


def test_static_json_is_checked(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    assert server.site_root(app, server.load_config(app)) == app.resolve()
    (app / "static.json").write_text("{not json")
    with pytest.raises(SystemExit, match="not valid JSON"):
        server.load_config(app)
    (app / "static.json").write_text('{"clean_urls": "yes"}')
    with pytest.raises(SystemExit, match="clean_urls"):
        server.load_config(app)
    with pytest.raises(SystemExit, match="outside the app"):
        server.site_root(app, {"root": "../elsewhere"})
