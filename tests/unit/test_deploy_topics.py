"""`deploy/topics.sh` creates every topic the services use, compacting the ones they compact."""

from __future__ import annotations

import re
from pathlib import Path

from shared import topics

SCRIPT = (Path(__file__).parents[2] / "deploy" / "topics.sh").read_text()


def _loop_topics(config: str) -> set[str]:
    """The topics of the script's `for` loop whose `create` passes `config`."""
    found: set[str] = set()
    for names, body in re.findall(r"for name in (.*?); do\n(.*?)\ndone", SCRIPT, re.S):
        if config in body:
            found |= set(names.replace("\\\n", " ").split())
    return found


def test_the_script_creates_every_topic() -> None:
    created = _loop_topics("retention.ms") | _loop_topics("cleanup.policy=compact")
    assert created == set(topics.ALL)


def test_the_compacted_topics_are_compacted() -> None:
    compacted = {t for t, c in topics.CONFIGS.items() if c.get("cleanup.policy") == "compact"}
    assert _loop_topics("cleanup.policy=compact") == compacted
