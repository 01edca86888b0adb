"""Builds tests/assets/tiny-tokenizer: a byte-level BPE with a ChatML template, trained on a tiny corpus.

Run from the repository root: `python tests/assets/make_tiny_tokenizer.py`. The output is committed so tests
never need the network; re-running gives the same files.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

HERE = Path(__file__).parent
OUT = HERE / "tiny-tokenizer"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "Classify the text into one of these labels: negative, neutral, positive.",
    "Text: I love this phone, the battery is great. Answer with the label only.",
    "The service was terrible and the food was cold.",
    "It is a car. It drives on the road. Nothing special.",
    "user assistant system hello world how are you today?",
    "The quick brown fox jumps over the lazy dog 0123456789.",
    "Support ticket: my order did not arrive, please refund me.",
    "positive negative neutral good bad okay fine great awful",
]


def main() -> None:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    fast.model_max_length = 256
    fast.save_pretrained(OUT)


if __name__ == "__main__":
    main()
