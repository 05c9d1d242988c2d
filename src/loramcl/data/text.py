"""Your own text task from plain files: JSON Lines, JSON, CSV or Parquet, read by Hugging Face `datasets`.

`data=text` trains LoRA-MCL on any "input -> one or several reference outputs" problem
(paraphrases, dialogue replies, story continuations, code):

    python train.py data=text data.splits.train=train.jsonl data.splits.val=val.jsonl \\
        data.splits.test=test.jsonl model=causal_lm model.name_or_path=<folder or Hub name>

Each row holds an input (`input_field`, default "input") and its references (`reference_field`: one
field holding a string or a list of strings, or a list of fields such as CSV columns `ref1, ref2`,
whose empty cells are skipped). The prompt is `prompt` formatted with the row's fields (default
"{input}"), wrapped in the tokenizer's chat template as a user turn when it has one
(`chat_template`: auto | true | false). A training row is `prompt + separator + reference + EOS`;
only the reference and EOS are scored. `hub_dataset=<name>` reads a Hub dataset instead (the
`splits` then name its splits).

Every file is checked (`loramcl.data.rows`) when the run starts, before any model is built, each problem one line naming
the file, the line (CSV / JSON Lines; "row" for Parquet and Hub data) and the field: a line that is not
JSON, a missing or empty input, a missing or empty reference list, a field the prompt uses that a
row lacks. The rows are then loaded with `datasets.load_dataset` (cached by `datasets`).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any, Optional

from torch.utils.data import DataLoader, Dataset

from loramcl.data.collate import PromptCollator
from loramcl.data.hdf5 import DataFormatError
from loramcl.data.modules import H5DataModule
from loramcl.data.rows import TextSchema, _json_rows, _table_rows, file_format, validate_file

CHAT_TEMPLATE_MODES = ("auto", "true", "false")

log = logging.getLogger(__name__)

def _csv_options(path: Path) -> dict:
    """datasets' CSV reader told to keep every cell as text (no numbers, "" for an empty cell)."""
    import datasets

    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, encoding="utf-8", newline="") as handle:
        header = next(csv.reader(handle, delimiter=delimiter))
    return {"delimiter": delimiter, "keep_default_na": False,
            "features": datasets.Features({name: datasets.Value("string") for name in header})}


def load_rows(source: str, schema: TextSchema, fmt: str = "auto", hub_dataset: Optional[str] = None,
              hub_config: Optional[str] = None) -> list[dict]:
    """The validated items of one split: a local file, or split `source` of the Hub dataset `hub_dataset`,
    read through `datasets.load_dataset`."""
    import datasets

    datasets.disable_progress_bars()
    if hub_dataset:
        try:
            table = datasets.load_dataset(hub_dataset, hub_config, split=source)
        except Exception as err:
            raise DataFormatError(f"data.hub_dataset={hub_dataset}: cannot load split {source!r} "
                                  f"({' '.join(str(err).split())[:200]})") from None
        label = f"{hub_dataset}[{source}]"
        csv_cells = False
    else:
        path = Path(source).expanduser()
        kind = file_format(path, fmt)
        try:
            # CSV cells as text, as csv.DictReader gives them to validate_file (no numbers, empty cells "")
            options = _csv_options(path) if kind == "csv" else {}
            table = datasets.load_dataset(kind, data_files=str(path), split="train", **options)
        except Exception as err:  # validate_file ran first: what is left is the library's own limit
            if kind == "json":  # datasets 5.2's reader fails on some valid files (a blank line among rows
                # whose field types differ): the rows as Python's json module reads them, checked alike
                log.info(f"{path}: read with Python's json module (datasets: {' '.join(str(err).split())[:120]})")
                return [schema.item(row, where, i) for i, (where, row) in enumerate(_json_rows(path))]
            raise DataFormatError(f"{path}: the datasets library cannot read it ({' '.join(str(err).split())[:200]})") \
                from None
        label, csv_cells = str(path), kind == "csv"
    return [schema.item(row, where, i, csv_cells) for i, (where, row) in enumerate(_table_rows(table, label))]


class TextItems(Dataset):
    """The validated items of one split (id, source, references, fields), in file order."""

    def __init__(self, items: list[dict], label: str):
        self.items, self.label = items, label

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]

    @property
    def texts(self) -> list[list[str]]:
        return [item["references"] for item in self.items]

    @property
    def sources(self) -> list[str]:
        return [item["source"] for item in self.items]


class TextCollator(PromptCollator):
    """`prompt` formatted with an item's fields, optionally as the user turn of the tokenizer's chat
    template; then `separator + reference + EOS` for training rows."""

    def __init__(self, tokenizer: Any, prompt: str = "{input}", chat_template: bool = False,
                 system_prompt: Optional[str] = None, input_field: str = "input", separator: Optional[str] = None,
                 **kwargs: Any):
        super().__init__(tokenizer, **kwargs)
        self.template, self.chat, self.system_prompt = prompt, chat_template, system_prompt
        self.input_field = input_field
        # a plain prompt is followed by a space (as ALMA's); a chat template ends its turn itself
        self.separator = separator if separator is not None else ("" if chat_template else " ")
        self.add_special_tokens = not chat_template  # the chat template writes BOS itself

    def render(self, item: dict) -> str:
        fields = {**item.get("fields", {}), self.input_field: self.cut(item["source"])}
        text = self.template.format(**fields)
        if not self.chat:
            return text
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + \
            [{"role": "user", "content": text}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class TextDataModule(H5DataModule):
    """train / val / test of a text task from local files (or a Hub dataset); see the module text."""

    kind = "text"

    def __init__(self, splits: dict, processor: str, name: Optional[str] = None, input_field: str = "input",
                 reference_field: Any = "references", id_field: Optional[str] = None, prompt: str = "{input}",
                 chat_template: str = "auto", system_prompt: Optional[str] = None, separator: Optional[str] = None,
                 format: str = "auto", hub_dataset: Optional[str] = None, hub_config: Optional[str] = None,
                 max_source_tokens: int = 256, max_target_tokens: int = 256, **kwargs: Any):
        splits = {role: str(where) for role, where in dict(splits or {}).items() if where is not None}
        if "train" not in splits:
            raise ValueError("data.splits.train names no file (give the training file: data.splits.train=<path>)")
        name = name or (hub_dataset.replace("/", "_") if hub_dataset else Path(splits["train"]).stem)
        super().__init__(root=str(Path(splits["train"]).parent), name=name, processor=processor, splits=splits, **kwargs)
        reference = list(reference_field) if not isinstance(reference_field, str) else reference_field
        self.schema = TextSchema(input_field, reference, id_field, prompt)
        if str(chat_template).lower() not in CHAT_TEMPLATE_MODES:
            raise ValueError(f"data.chat_template must be auto, true or false, got {chat_template!r}")
        self.chat_template, self.system_prompt, self.separator = str(chat_template).lower(), system_prompt, separator
        self.format, self.hub_dataset, self.hub_config = format, hub_dataset, hub_config
        self.max_source_tokens, self.max_target_tokens = max_source_tokens, max_target_tokens

    def check(self) -> None:
        """Every local split file, row by row (one line on the first problem), before any model is built."""
        if self.hub_dataset:  # reading it is the check (the rows are kept for setup)
            self.sets = {role: TextItems(load_rows(split, self.schema, self.format, self.hub_dataset, self.hub_config),
                                         f"{self.hub_dataset}[{split}]") for role, split in self.splits.items()}
            return
        missing = [role for role, where in self.splits.items() if not Path(where).expanduser().exists()]
        if self.auto_prepare and missing:  # a generated demo set: the missing files are written, once
            from hydra.utils import get_method

            args = {k: v for k, v in self.auto_prepare.items() if k != "function"}
            log.info(f"preparing {', '.join(missing)} of {self.name} ({self.auto_prepare['function']})")
            try:
                get_method(self.auto_prepare["function"])(only=missing, **args)
            except FileExistsError:  # another process wrote it meanwhile (same seed): used as it is
                pass
        for role, where in self.splits.items():
            count = validate_file(where, self.schema, self.format)
            log.info(f"data.splits.{role}: {where} ({count} rows)")
        if self.chat_template == "true" and Path(self.processor_path).expanduser().is_dir():
            self.load_processor()  # a tokenizer without a chat template is named now, not after the model loads

    def load_processor(self) -> Any:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.processor_path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        if self.chat_template == "true" and not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"data.chat_template=true but the tokenizer of {self.processor_path} has no chat template "
                             f"(set data.chat_template=false or auto to use data.prompt alone)")
        return tokenizer

    def uses_chat_template(self) -> bool:
        has = bool(getattr(self.processor, "chat_template", None))
        return self.chat_template == "true" or (self.chat_template == "auto" and has)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.processor is None:
            self.processor = self.load_processor()
            log.info(f"prompt: {self.schema.prompt!r}" + (" as the user turn of the tokenizer's chat template"
                                                          if self.uses_chat_template() else ""))
        if not self.sets:
            self.sets = self.load_sets()

    def load_sets(self) -> dict[str, Any]:
        return {role: TextItems(load_rows(where, self.schema, self.format, self.hub_dataset, self.hub_config), where)
                for role, where in self.splits.items()}

    def collator(self, train: bool, references: str) -> TextCollator:
        return TextCollator(self.processor, self.schema.prompt, self.uses_chat_template(), self.system_prompt,
                            self.schema.input_field, self.separator, references=references, train=train,
                            seed=self.seed, max_source_tokens=self.max_source_tokens,
                            max_target_tokens=self.max_target_tokens)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.sets["test"], batch_size=self.val_batch_size, shuffle=False,
                          sampler=self.shard(self.sets["test"]), num_workers=self.num_workers,
                          collate_fn=self.collator(False, "first"))

