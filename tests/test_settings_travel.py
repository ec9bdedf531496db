"""Settings travel, all of them (issue 16): a run's recipe is read back as a `Recipe` and
loads the base the same way in training, evaluation and export (`Recipe.loading`); a
`data.eval` built with other processor settings than `data.train` is refused before launch;
evaluating several datasets in a row applies each one's own pixel limits."""

from __future__ import annotations

import json

import pytest

from qvq_tune.errors import UserError

from .conftest import make_recipe

SMALL = 56 * 56          # pixel limits other than the tiny processor's own (112 x 112)


@pytest.fixture(scope="module")
def small_pixels(tiny_model, tmp_path_factory):
    """A few test records built with 56x56 images (min = max = 56^2): 4 image tokens, not 16."""
    from qvq_tune.data.build import BuildConfig, build
    from qvq_tune.synth.generate import SynthConfig, generate
    root = tmp_path_factory.mktemp("small_pixels")
    generate(SynthConfig(train=4, validation=0, test=4, dpo=False), root / "raw", progress=False)
    build(BuildConfig(input=str(root / "raw" / "test.jsonl"), model=str(tiny_model("qwen2_vl")),
                      out=str(root / "built"), reasoning="qvq", min_pixels=SMALL, max_pixels=SMALL, workers=1))
    return root / "built"


def _qlora_run(tmp_path, tiny_model, built_train, **quant):
    """A run folder written as the trainer writes it (recipe, base identity, dataset record),
    with a fresh LoRA adapter in adapter/, without training."""
    from peft import LoraConfig, get_peft_model

    from qvq_tune.models.loading import load_model
    from qvq_tune.run_folder import RunFolder
    model_dir = tiny_model("qwen2_vl")
    recipe = make_recipe(tmp_path, model_dir, built_train["train"], method="qlora",
                         **{"data.eval": str(built_train["test"]), **{f"quant.{k}": v for k, v in quant.items()}})
    run = RunFolder(recipe.run_dir)
    run.create(recipe, model_dir=model_dir, train_data=recipe.data.train, eval_data=recipe.data.eval)
    peft = get_peft_model(load_model(model_dir), LoraConfig(r=4, target_modules=["q_proj"]))
    peft.save_pretrained(str(run.adapter))
    return recipe, run


def test_the_run_folder_reads_its_recipe_back_as_a_recipe(tmp_path, tiny_model, built_train):
    from qvq_tune.export.sources import Sources
    from qvq_tune.recipe import Recipe
    recipe, run = _qlora_run(tmp_path, tiny_model, built_train, type="fp4", double_quant=False)
    read = run.recipe()
    assert isinstance(read, Recipe) and read == recipe
    assert read.loading() == {"dtype": "float32", "load_in_4bit": True, "quant_type": "fp4", "double_quant": False}
    # export reads the same recipe through the same function
    assert Sources.resolve(run=run.path).quantized == {"dtype": "float32", "quant_type": "fp4",
                                                        "double_quant": False}


def test_a_bad_recipe_in_a_run_folder_is_an_error_naming_the_file_and_line(tmp_path, tiny_model, built_train):
    _, run = _qlora_run(tmp_path, tiny_model, built_train)
    path = run.file("recipe.yaml")
    path.write_text(path.read_text().replace("method: qlora", "method: qlorra"))
    with pytest.raises(UserError) as err:
        run.recipe()
    assert "recipe.yaml" in str(err.value) and "method" in str(err.value) and err.value.line is not None


@pytest.mark.parametrize("quant", [{"type": "fp4", "double_quant": False}, {"type": "nf4", "double_quant": True}])
def test_eval_of_a_qlora_run_loads_the_base_with_its_quant_settings(quant, tmp_path, tiny_model, built_train,
                                                                   monkeypatch):
    """Today an fp4 run was evaluated as nf4 (only load_in_4bit travelled): every 4-bit layer
    of the evaluated model carries the run's quant type and double quantisation."""
    from qvq_tune.eval import evaluate as ev
    _, run = _qlora_run(tmp_path, tiny_model, built_train, **quant)
    seen = {}

    def capture(em, dataset_dir, opts, out_dir, **kw):
        seen["em"], seen["opts"] = em, opts
        return {}
    monkeypatch.setattr(ev, "evaluate", capture)
    ev.run_eval(tmp_path / "ev", ev.EvalOptions(max_new_tokens=1, device="cpu"), run=run.path)
    states = [m.weight.quant_state for _, m in seen["em"].model.named_modules() if type(m).__name__ == "Linear4bit"]
    assert states
    assert {s.quant_type for s in states} == {quant["type"]}
    assert {bool(s.nested) for s in states} == {quant["double_quant"]}
    info = seen["em"].info
    assert (info["quant_type"], info["double_quant"]) == (quant["type"], quant["double_quant"])


def test_eval_data_built_with_other_processor_settings_is_refused_before_launch(tmp_path, tiny_model, built_train,
                                                                                small_pixels):
    from qvq_tune.train.run import check
    recipe = make_recipe(tmp_path, tiny_model("qwen2_vl"), built_train["train"], method="lora",
                         **{"data.eval": str(small_pixels)})
    with pytest.raises(UserError) as err:
        check(recipe, "recipe.yaml")
    message = str(err.value)
    assert err.value.key == "data.eval"
    assert str(small_pixels) in message and str(built_train["train"]) in message
    assert f"min_pixels={SMALL}" in message and "min_pixels unset" in message
    # the same settings on both sides pass
    check(make_recipe(tmp_path, tiny_model("qwen2_vl"), built_train["train"], method="lora",
                      **{"data.eval": str(built_train["test"])}), "recipe.yaml")


def test_evaluating_datasets_in_a_row_applies_each_ones_pixel_limits(tiny_model, built_train, small_pixels,
                                                                      monkeypatch):
    """A dataset built with the processor's defaults, scored after one built with overrides,
    is scored with the defaults (today the overrides stayed)."""
    from qvq_tune.eval.evaluate import EvalOptions, load_for_eval, score_dataset
    from qvq_tune.eval.prompts import prompt_from_sample
    from qvq_tune.models.loading import processor_pixel_limits
    opts = EvalOptions(max_new_tokens=1, limit=2, batch_size=2, device="cpu")
    em = load_for_eval(tiny_model("qwen2_vl"), None, opts)
    defaults = processor_pixel_limits(em.processor)
    assert defaults["image_processor"] != (SMALL, SMALL)
    seen = []
    real_prompt = prompt_from_sample

    def record(sample, *args):
        seen.append((processor_pixel_limits(em.processor)["image_processor"], len(sample["input_ids"])))
        return real_prompt(sample, *args)
    import qvq_tune.eval.evaluate as ev
    monkeypatch.setattr(ev, "prompt_from_sample", record)
    assert len(score_dataset(em, small_pixels, opts)) == 2
    assert len(score_dataset(em, built_train["test"], opts)) == 2
    assert len(score_dataset(em, small_pixels, opts)) == 2
    limits = [s[0] for s in seen]
    assert limits == [(SMALL, SMALL)] * 2 + [defaults["image_processor"]] * 2 + [(SMALL, SMALL)] * 2
    assert processor_pixel_limits(em.processor)["image_processor"] == (SMALL, SMALL)
    settings = json.loads((built_train["test"] / "report.json").read_text())["settings"]
    assert settings.get("min_pixels") is None and settings.get("max_pixels") is None
