import pytest

from keras_llm.data import CorpusError
from keras_llm.data import default_corpus
from keras_llm.data import read_corpus


def test_default_corpus_is_the_cpython_help_text():
    docs = default_corpus()
    assert len(docs) > 50
    assert sum(map(len, docs)) > 300_000
    assert docs == default_corpus()  # stable order


def test_reads_files_and_folders(tmp_path):
    (tmp_path / "a.txt").write_text("first")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "b.txt").write_text("second")
    (sub / "skip.bin").write_bytes(b"\x00")
    assert read_corpus(str(tmp_path)) == ["first", "second"]
    assert read_corpus([str(tmp_path / "a.txt")]) == ["first"]


def test_errors(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        read_corpus(str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(CorpusError, match="is empty"):
        read_corpus(str(empty))
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(CorpusError, match="not utf-8 text"):
        read_corpus(str(binary))
    folder = tmp_path / "nothing"
    folder.mkdir()
    with pytest.raises(CorpusError, match="no .txt files"):
        read_corpus(str(folder))
