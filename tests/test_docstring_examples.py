"""Every `Example:` block in a public docstring runs as written."""

import inspect
import re

import pytest

import keras_llm
import keras_llm.compression
import keras_llm.data.clean
import keras_llm.data.crawl
import keras_llm.data.dedup
import keras_llm.data.digits
import keras_llm.data.extract
import keras_llm.data.prepare
import keras_llm.data.shards
import keras_llm.finetuning
import keras_llm.multi_worker_fix
import keras_llm.tuning

PUBLIC = [
    keras_llm.layers.TransformerBlock,
    keras_llm.layers.FeedForward,
    keras_llm.layers.ReversibleBlock,
    keras_llm.layers.ReversibleStack,
    keras_llm.layers.attention.MultiHeadAttention,
    keras_llm.layers.attention.BaseAttention,
    keras_llm.layers.attention.SlidingWindowAttention,
    keras_llm.layers.attention.BlockSparseAttention,
    keras_llm.layers.attention.AxialAttention,
    keras_llm.layers.attention.LSHAttention,
    keras_llm.layers.attention.register_attention,
    keras_llm.layers.heads.NextSentenceHead,
    keras_llm.layers.heads.SequenceClassificationHead,
    keras_llm.layers.heads.PairClassificationHead,
    keras_llm.layers.heads.SpanQAHead,
    keras_llm.layers.heads.best_spans,
    keras_llm.layers.heads.CausalLMHead,
    keras_llm.models.GPT,
    keras_llm.models.BERT,
    keras_llm.models.BERT.from_preset,
    keras_llm.models.BertPretrainer,
    keras_llm.models.EncoderDecoder,
    keras_llm.data.mlm_nsp_dataset,
    keras_llm.data.learn_mlm_tokenizer,
    keras_llm.data.split_sentences,
    keras_llm.data.read_sentiment,
    keras_llm.data.read_entailment,
    keras_llm.data.read_squad,
    keras_llm.data.classification_dataset,
    keras_llm.data.pair_dataset,
    keras_llm.data.squad_features,
    keras_llm.data.decode_answers,
    keras_llm.data.squad_metrics,
    keras_llm.models.GPT.with_attention,
    keras_llm.data.CharacterTokenizer,
    keras_llm.data.digits.load_digits,
    keras_llm.compression.prune_low_magnitude,
    keras_llm.compression.strip_pruning,
    keras_llm.compression.sparsity_report,
    keras_llm.compression.UpdatePruningStep,
    keras_llm.compression.Distiller,
    keras_llm.compression.attention_probabilities,
    keras_llm.compression.factorize,
    keras_llm.compression.LowRankDense,
    keras_llm.data.StageReport,
    keras_llm.data.read_documents,
    keras_llm.data.extract.extract,
    keras_llm.data.clean.clean,
    keras_llm.data.normalize_text,
    keras_llm.data.quality_issues,
    keras_llm.data.CleanConfig,
    keras_llm.data.dedup.dedup,
    keras_llm.data.Deduplicator,
    keras_llm.data.shingles,
    keras_llm.data.crawl.crawl,
    keras_llm.data.normalize_url,
    keras_llm.data.learn_tokenizer,
    keras_llm.data.vocabulary_coverage,
    keras_llm.data.prepare.prepare,
    keras_llm.data.ShardWriter,
    keras_llm.data.shard_dataset,
    keras_llm.callbacks.ThroughputMeter,
    keras_llm.optimizers.GradientAccumulation,
    keras_llm.optimizers.AdamW,
    keras_llm.optimizers.LinearDecayWithWarmup,
    keras_llm.optimizers.for_pretraining,
    keras_llm.distribute.get_strategy,
    keras_llm.distribute.check_tf_config,
    keras_llm.multi_worker_fix.check_keras_internals,
    keras_llm.data.shards.distributed_shard_dataset,
    keras_llm.callbacks.StepCheckpoint,
    keras_llm.callbacks.CheckpointManager,
    keras_llm.callbacks.TerminateOnNaN,
    keras_llm.models.GPT.get_layout_map,
    keras_llm.tuning.GPTHyperModel,
    keras_llm.tuning.tune,
    keras_llm.tuning.BertHyperModel,
    keras_llm.finetuning.load_backbone,
    keras_llm.finetuning.build_task_model,
    keras_llm.finetuning.finetune,
    keras_llm.pretrain,
    keras_llm.generate_text,
]


def _examples(obj):
    doc = inspect.getdoc(obj) or ""
    return re.findall(r"```python\n(.*?)```", doc, flags=re.S)


def test_every_public_object_has_an_example():
    missing = [o.__name__ for o in PUBLIC if not _examples(o)]
    assert not missing, f"no Example: in {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("obj", PUBLIC, ids=lambda o: o.__name__)
def test_example_runs(obj, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for code in _examples(obj):
        namespace = {"keras_llm": keras_llm, "keras": __import__("keras")}
        exec(compile(code, f"<{obj.__name__} example>", "exec"), namespace)


# Modules whose examples are written as doctests (`>>>`) rather than
# ```python blocks.
DOCTEST_MODULES = ["keras_llm.compression.quantization"]


@pytest.mark.slow
@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_doctest_examples_run(name, tmp_path, monkeypatch):
    import doctest
    import importlib

    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    assert result.attempted > 0
    assert result.failed == 0
