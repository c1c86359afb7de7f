"""Reading text corpora: the embedded default corpus and user files."""

import os

from keras_llm.errors import UserError

EMBEDDED_CORPUS_NAME = "pydoc_data.topics"


class CorpusError(UserError):
    """A corpus that cannot be used (missing, unreadable, empty, too short)."""


def default_corpus():
    """The English text that ships with every CPython, as a list of documents.

    It is the help text of `pydoc` (`pydoc_data.topics`, about 465,000
    characters in 79 documents), so demos and tests run with no download.

    Returns:
        A list of strings, one per help topic, in a stable order.
    """
    from pydoc_data import topics

    return [topics.topics[name] for name in sorted(topics.topics)]


def read_corpus(paths, encoding="utf-8"):
    """Reads text files as documents (one document per file).

    Args:
        paths: a path or a list of paths to files or folders. A folder
            contributes every `.txt` file under it, sorted.
        encoding: text encoding. Defaults to `"utf-8"`.

    Returns:
        A list of strings.

    Raises:
        CorpusError: for a missing path, an undecodable file, a folder with
            no `.txt` files, or a corpus with no text at all.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = []
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            found = sorted(
                os.path.join(root, f)
                for root, _, names in os.walk(path)
                for f in names
                if f.endswith(".txt")
            )
            if not found:
                raise CorpusError(
                    f"corpus folder {path} has no .txt files; pass text files "
                    "or a folder that holds some"
                )
            files.extend(found)
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise CorpusError(f"corpus file {path} does not exist")
    documents = []
    for f in files:
        try:
            with open(f, encoding=encoding) as fh:
                documents.append(fh.read())
        except UnicodeDecodeError as e:
            raise CorpusError(
                f"corpus file {f} is not {encoding} text ({e.reason} at byte "
                f"{e.start}); convert it or pass --encoding"
            ) from e
    if not any(d.strip() for d in documents):
        raise CorpusError(
            f"corpus {', '.join(files)} is empty; give it some text"
        )
    return documents
