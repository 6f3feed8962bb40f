"""README.md and docs/*.md hold only commands that run as written and links that resolve.

Every ``tools/*.py`` / ``demo/*.py`` script the pages quote exists and answers ``--help`` in a
subprocess (as a user runs it from the repository root); every ``--option`` quoted after a
script (and its subcommand, e.g. ``benchmark.py mixer``) is one that the script's help lists;
the quoted shell launchers exist; every relative link and image points at a file or folder of the repository, and a ``#anchor``
into a page at one of its headings; README stays a short guide and keeps CI's command.
"""
import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, load_tool

ROOT = Path(ROOT)
PAGES = [ROOT / 'README.md'] + sorted((ROOT / 'docs').glob('*.md'))
README_MAX_LINES = 260

SCRIPT = re.compile(r'\b((?:tools|demo)/[A-Za-z0-9_]+\.py)\b')
FENCE = re.compile(r'^```[^\n]*\n(.*?)^```', re.S | re.M)
SPAN = re.compile(r'`([^`]+)`')
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')


def _page_text(page):
    return page.read_text(encoding='utf-8')


def _commands(text):
    """The command texts of a page: each line of a fenced block (backslash continuations
    joined) and each inline code span, with the fenced blocks left out of the spans."""
    commands = []
    for block in FENCE.findall(text):
        commands += block.replace('\\\n', ' ').splitlines()
    commands += [' '.join(s.split()) for s in SPAN.findall(FENCE.sub('', text))]
    return commands


def _quoted():
    """{script: {(subcommand or None): {options}}} over every page, and where each was seen."""
    found, where = {}, {}
    for page in PAGES:
        for command in _commands(_page_text(page)):
            for m in SCRIPT.finditer(command):
                script = m.group(1)
                words = command[m.end():].split()
                options = set()
                for w in words:
                    if not w.startswith('--'):
                        continue
                    options.add(w.split('=', 1)[0])
                first = words[0] if words and re.fullmatch(r'[a-z_]+', words[0]) else None
                found.setdefault(script, {}).setdefault(first, set()).update(options)
                where.setdefault(script, set()).add(page.name)
    return found, where


QUOTED, WHERE = _quoted()
# Modules with a leading underscore are imported by the tools, not run: they must exist only.
SCRIPTS = sorted(s for s in QUOTED if not Path(s).name.startswith('_'))


def test_pages_quote_the_tools():
    """The scan finds the commands at all (a regex that matched nothing would pass the rest)."""
    assert {'tools/train.py', 'tools/test.py', 'tools/benchmark.py',
            'tools/convert_checkpoint.py'} <= set(QUOTED), sorted(QUOTED)
    assert 'mixer' in QUOTED['tools/benchmark.py']


def test_quoted_scripts_exist():
    missing = {s: sorted(WHERE[s]) for s in QUOTED if not (ROOT / s).is_file()}
    assert not missing, f'quoted but not in the repository: {missing}'


def test_quoted_shell_scripts_exist():
    """The launchers (install, demo, dist_train, dist_test) run for minutes or start torchrun,
    so they are only looked up, not run."""
    quoted = {m for page in PAGES for command in _commands(_page_text(page))
              for m in re.findall(r'\b(?:tools|demo)/[A-Za-z0-9_]+\.sh\b', command)}
    assert {'tools/install.sh', 'tools/demo.sh', 'tools/dist_train.sh'} <= quoted, quoted
    assert not [s for s in quoted if not (ROOT / s).is_file()]


@pytest.fixture(scope='module')
def helps():
    """``python SCRIPT --help`` of every quoted script, run in parallel subprocesses."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    procs = {s: subprocess.Popen([sys.executable, s, '--help'], cwd=ROOT, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for s in SCRIPTS if (ROOT / s).is_file()}
    out = {}
    for s, p in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        out[s] = (p.returncode, stdout, stderr)
    return out


@pytest.mark.parametrize('script', SCRIPTS)
def test_quoted_script_help_exits_0(script, helps):
    assert script in helps, f'{script} is not in the repository'
    rc, stdout, stderr = helps[script]
    assert rc == 0, (f'{script} --help exited {rc} (quoted in {sorted(WHERE[script])}):\n'
                     f'{stderr[-2000:]}')
    assert 'usage' in stdout.lower(), stdout[:500]


def _subcommand_help(script, sub):
    """The help text of ``SCRIPT SUB`` from the tool's own parser, in this process."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as exc:
        load_tool(Path(script).stem).main([sub, '--help'])
    assert exc.value.code == 0, f'{script} {sub} --help exited {exc.value.code}'
    return buf.getvalue()


@pytest.mark.parametrize('script', SCRIPTS)
def test_quoted_options_exist(script, helps):
    assert script in helps, f'{script} is not in the repository'
    rc, top, _ = helps[script]
    assert rc == 0
    usage = top.split('\n\n', 1)[0]
    subs = set(re.findall(r'\{([\w,]+)\}', usage)[0].split(',')) if '{' in usage else set()
    wrong = []
    for first, options in QUOTED[script].items():
        if subs and first in subs:
            text = _subcommand_help(script, first)
        elif subs and first is not None:
            wrong.append(f'{script} {first} (subcommands: {", ".join(sorted(subs))})')
            continue
        else:
            text = top
        listed = set(re.findall(r'(?<![\w-])--[\w-]+', text))
        wrong += [' '.join(filter(None, (script, first, o))) for o in sorted(options - listed)]
    assert not wrong, f'options quoted in the docs that the tool does not take: {wrong}'


def _slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def _anchors(page):
    text = FENCE.sub('', _page_text(page))
    return {_slug(h) for h in re.findall(r'^#+ (.+)$', text, re.M)}


@pytest.mark.parametrize('page', PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    text = FENCE.sub('', _page_text(page))
    broken = []
    for target in LINK.findall(text):
        if re.match(r'[a-z]+:', target):          # http(s), mailto
            continue
        path, _, anchor = target.partition('#')
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == '.md' and anchor not in _anchors(dest):
            broken.append(f'{target} (no such heading)')
    assert not broken, f'{page.name}: broken links {broken}'


def test_readme_is_a_short_guide_with_ci_command():
    lines = _page_text(ROOT / 'README.md').splitlines()
    assert len(lines) <= README_MAX_LINES, f'README.md has {len(lines)} lines'
    ci = [line for line in (ROOT / '.ci' / 'run').read_text().splitlines()
          if 'tools/install.sh' in line]
    assert ci and all(line in lines for line in ci), ci
    assert 'bash tools/install.sh && bash tools/demo.sh' in lines
