"""The models the simulator serves: the names in ``models.txt`` beside this module (or a file like it).

The Messages API answers a request for a model it does not serve with a 404 ``not_found_error`` whose
message is ``model: NAME``; the simulator does the same for a name outside its catalog, so a typo
(``claude-sonet-4-6``) fails in local tests as it would against the API. The file holds one name a
line; blank lines and ``#`` comments are skipped.
"""

from pathlib import Path

MODELS_FILE = Path(__file__).with_name("models.txt")


def read(path: Path) -> frozenset[str]:
    """The model names listed in ``path``."""
    lines = (line.partition("#")[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return frozenset(line for line in lines if line)


MODELS = read(MODELS_FILE)
