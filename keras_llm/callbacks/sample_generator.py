"""Prints a generated line every N training steps."""

import keras


class SampleGenerator(keras.callbacks.Callback):
    """Generates from a prompt every `every_n_steps` steps and prints it.

    A sample shows what a loss figure does not (repetition, broken words),
    early, while the run can still be stopped.

    Args:
        tokenizer: the tokenizer of the model's vocabulary.
        prompt: str. The prompt. Defaults to `"\\n"`.
        every_n_steps: int. Steps between samples; `0` samples only at the
            end of each epoch. Defaults to `500`.
        max_length: int. Length of the sample, prompt included. Defaults to
            `64`.
        sampler: keras-hub sampler or name. Defaults to `"top_k"`.
        seed: int or `None`. Sampling seed. Defaults to `None`.
        print_fn: function taking one string. Defaults to `print`.
    """

    def __init__(
        self,
        tokenizer,
        prompt="\n",
        every_n_steps=500,
        max_length=64,
        sampler="top_k",
        seed=None,
        print_fn=print,
    ):
        super().__init__()
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.every_n_steps = every_n_steps
        self.max_length = max_length
        self.sampler = sampler
        self.seed = seed
        self.print_fn = print_fn
        self.samples = []
        self._step = 0

    def sample(self):
        text = self.model.generate(
            self.prompt,
            max_length=self.max_length,
            sampler=self.sampler,
            tokenizer=self.tokenizer,
            seed=self.seed,
        )
        self.samples.append((self._step, text))
        return text

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self.every_n_steps and self._step % self.every_n_steps == 0:
            text = self.sample()
            self.print_fn(f"\n[step {self._step}] {text!r}")

    def on_epoch_end(self, epoch, logs=None):
        if not self.every_n_steps:
            text = self.sample()
            self.print_fn(f"\n[epoch {epoch + 1}] {text!r}")
