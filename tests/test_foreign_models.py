"""Models diffex did not train: v- and x0-prediction UNets, folders without diffex.json, torch.export classifiers."""

from __future__ import annotations

import io
import json
import math
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from diffex.cli import app
from diffex.data.normalize import Normalization
from diffex.errors import DiffexError
from diffex.models.classifier import load_classifier
from diffex.models.diffusion import DiffusionInfo, DiffusionModel
from diffex.models.sampler import SamplerSpec, ddim_invert, ddim_render, psnr
from diffex.models.unet import UNetSpec, build_unet, default_scheduler_config

SPEC = UNetSpec(block_out_channels=(16, 32), norm_num_groups=8, attention_max_res=4, attention_head_dim=8)


def _schedule(prediction_type: str, **kw) -> dict:
    return {**default_scheduler_config(), "prediction_type": prediction_type, **kw}


@pytest.mark.parametrize("t", [10, 500, 990, torch.tensor([3, 300, 900])])
def test_v_and_sample_predictions_are_converted_to_eps(t):
    torch.manual_seed(0)
    unet = build_unet(SPEC, 1, 8).double()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    raw = DiffusionModel(unet, _schedule("epsilon"), DiffusionInfo(1, 8)).eps(x, t)  # the network's own output
    v_model = DiffusionModel(unet, _schedule("v_prediction"), DiffusionInfo(1, 8))
    a = v_model.alphas_cumprod[torch.as_tensor(t)].view(-1, 1, 1, 1)  # float64, computed here independently
    torch.testing.assert_close(v_model.eps(x, t), a.sqrt() * raw + (1 - a).sqrt() * x, rtol=1e-12, atol=1e-12)
    x0_model = DiffusionModel(unet, _schedule("sample"), DiffusionInfo(1, 8))
    torch.testing.assert_close(x0_model.eps(x, t), (x - a.sqrt() * raw) / (1 - a).sqrt(), rtol=1e-10, atol=1e-10)
    assert v_model.prediction_type == "v_prediction" and v_model.dtype == torch.float64


class _Oracle(torch.nn.Module):
    """The exact predictor (ε, v or x0) for data concentrated on one image x*."""

    def __init__(self, x_star, acp, kind):
        super().__init__()
        self.x_star, self.acp, self.kind = x_star, acp, kind
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        a = float(self.acp[int(t)])
        eps = (x - math.sqrt(a) * self.x_star) / math.sqrt(1 - a)
        out = {"epsilon": eps, "sample": self.x_star.expand_as(x), "v_prediction": math.sqrt(a) * eps - math.sqrt(1 - a) * self.x_star}
        return type("Out", (), {"sample": out[self.kind]})()


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_inversion_round_trip_with_every_prediction_type(kind):
    x_star = torch.rand(1, 2, 8, 8) * 2 - 1
    acp = DiffusionModel(build_unet(SPEC, 2, 8), default_scheduler_config(), DiffusionInfo(2, 8)).alphas_cumprod
    dm = DiffusionModel(_Oracle(x_star, acp, kind), _schedule(kind), DiffusionInfo(2, 8))
    spec = SamplerSpec(steps=10, t_end=699)
    xt = ddim_invert(dm, x_star, spec)
    assert float((xt - x_star).abs().max()) > 0.1  # inversion moved away from the image
    assert float(psnr(ddim_render(dm, xt, spec), x_star)[0]) > 60


def test_zero_terminal_snr_needs_v_prediction():
    unet = build_unet(SPEC, 1, 8)
    with pytest.raises(DiffexError, match="zero-terminal-SNR.*v_prediction"):
        DiffusionModel(unet, _schedule("epsilon", rescale_betas_zero_snr=True), DiffusionInfo(1, 8, source="dm"))
    DiffusionModel(unet, _schedule("v_prediction", rescale_betas_zero_snr=True), DiffusionInfo(1, 8))
    with pytest.raises(DiffexError, match="prediction_type 'flow'"):
        DiffusionModel(unet, _schedule("flow"), DiffusionInfo(1, 8))


# ------------------------------------------------------------------------ normalization
@pytest.fixture()
def foreign(tmp_path) -> Path:
    """A diffusers UNet2DModel folder without diffex.json (2 channels, 16 px)."""
    from diffusers import DDPMScheduler

    folder = tmp_path / "foreign"
    build_unet(SPEC, 2, 16).save_pretrained(folder)
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder)
    return folder


def test_foreign_model_needs_a_normalization(foreign, tmp_path):
    with pytest.raises(DiffexError, match=rf"{foreign}: no normalization.*--diffusion-normalization.*diffex-normalization.json"):
        DiffusionModel.load(foreign)
    norm = tmp_path / "norm.json"
    norm.write_text(json.dumps({"low": [100.0, 80.0], "high": [4000.0, 3500.0]}))
    dm = DiffusionModel.load(foreign, normalization=norm)
    assert dm.info.normalization == Normalization((100.0, 80.0), (4000.0, 3500.0)) and dm.info.normalization_source == f"option {norm}"
    raw = torch.tensor([100.0, 3500.0]).view(1, 2, 1, 1).expand(1, 2, 16, 16)
    torch.testing.assert_close(dm.to_model_space(raw)[0, :, 0, 0], torch.tensor([-1.0, 1.0]))
    (foreign / "diffex-normalization.json").write_text(json.dumps({"low": [0.0, 0.0], "high": [1.0, 2.0]}))
    assert DiffusionModel.load(foreign).info.normalization.high == (1.0, 2.0)  # the sidecar
    assert DiffusionModel.load(foreign, normalization=norm).info.normalization.high == (4000.0, 3500.0)  # the option wins


@pytest.mark.parametrize("content,message", [
    ('{"low": [0.0], "high": [1.0]}', "normalization for 1 channel"),
    ("not json", "cannot read the normalization"),
    ('{"low": [1.0, 2.0]}', "not a normalization"),
    ('[1, 2]', "must be a JSON object"),
])
def test_bad_normalization_files_name_the_file(foreign, tmp_path, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(DiffexError, match=rf"{bad}.*{message}|{message}.*{bad}|{bad}: {message}"):
        DiffusionModel.load(foreign, normalization=bad)


def test_a_normalization_that_contradicts_diffex_json_is_refused(tiny_diffusion, tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"low": [0.0, 0.0], "high": [1.0, 1.0]}))
    with pytest.raises(DiffexError, match="differs from the one given"):
        DiffusionModel.load(tiny_diffusion[0], normalization=other)
    same = tmp_path / "same.json"
    same.write_text(json.dumps(tiny_diffusion[1].info.normalization.to_dict()))
    assert DiffusionModel.load(tiny_diffusion[0], normalization=same).info.normalization_source == "diffex.json"


def test_inspect_is_not_compatible_without_a_normalization(foreign, tmp_path):
    r = CliRunner().invoke(app, ["inspect", "--diffusion", str(foreign), "-q"])
    assert r.exit_code == 2 and "PROBLEM      the diffusion model has no normalization" in r.output and "compatible   NO" in r.output
    norm = tmp_path / "norm.json"
    norm.write_text(json.dumps({"identity": True}))
    r = CliRunner().invoke(app, ["inspect", "--diffusion", str(foreign), "--diffusion-normalization", str(norm), "-q"])
    assert r.exit_code == 0 and "compatible   yes" in r.output and "already in its [-1, 1]" in r.output


def test_explain_refuses_a_foreign_model_without_normalization(tiny_classifier, cells, foreign, tmp_path):
    r = CliRunner().invoke(app, ["explain", "--classifier", str(tiny_classifier[0]), "--images", str(cells), "--diffusion",
                                 str(foreign), "--out", str(tmp_path / "exp"), "-q"])
    assert r.exit_code == 2 and f"{foreign}: no normalization" in r.output and "--diffusion-normalization" in r.output
    assert not (tmp_path / "exp").exists()


# ------------------------------------------------------------------------ torch.export classifiers
class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 16 * 16, 2)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def _save_export(net, path: Path, batch: int, dynamic: bool) -> Path:
    example = (torch.randn(batch, 2, 16, 16),)
    dims = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic else None
    torch.export.save(torch.export.export(net.eval(), example, dynamic_shapes=dims), path)
    path.with_suffix(".json").write_text(json.dumps({"class_names": ["control", "treated"], "image_size": 16,
                                                     "normalization": {"low": [0.0, 0.0], "high": [1.0, 1.0]}}))
    return path


@pytest.mark.parametrize("dynamic,batch", [(True, 4), (False, 2)])
def test_exported_program_loads_and_is_differentiable(tmp_path, dynamic, batch):
    torch.manual_seed(0)
    net = _Net()
    clf = load_classifier(_save_export(net, tmp_path / "model.pt2", batch, dynamic))
    assert clf.info.kind == "export" and clf.info.class_names == ("control", "treated")
    x = torch.randn(5, 2, 16, 16, requires_grad=True)  # 5: not a multiple of the static batch
    out = clf(x)
    torch.testing.assert_close(out, net(x), rtol=1e-5, atol=1e-5)
    (g,) = torch.autograd.grad(out[:, 1].sum(), x)
    x2 = x.detach().clone().requires_grad_(True)
    (g_eager,) = torch.autograd.grad(net(x2)[:, 1].sum(), x2)
    torch.testing.assert_close(g, g_eager, rtol=1e-5, atol=1e-6)


def test_exported_program_with_pickled_objects_needs_trust(tmp_path):
    good = _save_export(_Net(), tmp_path / "model.pt2", 2, True)
    bad = tmp_path / "evil.pt2"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("sample_inputs/model.pt"):
                buf = io.BytesIO()
                torch.save({"x": Path("/")}, buf)  # not plain tensors: only an unrestricted unpickler loads it
                data = buf.getvalue()
            zout.writestr(item, data)
    bad.with_suffix(".json").write_text(good.with_suffix(".json").read_text())
    with pytest.raises(DiffexError, match=rf"{bad}: .*sample_inputs/model.pt.*--trust-checkpoint"):
        load_classifier(bad)


def test_torchscript_loads_without_a_deprecation_warning(tmp_path):
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(_Net().eval(), torch.randn(1, 2, 16, 16)), path)
    path.with_suffix(".json").write_text(json.dumps({"class_names": ["a", "b"], "normalization": {"low": [0.0, 0.0], "high": [1.0, 1.0]}}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf = load_classifier(path)
    assert clf.info.kind == "torchscript"
    assert not [w for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))], [str(w.message) for w in caught]
