"""Flow-matching objective: targets consistent with the noising, pinned frames, dropout, learning."""

import torch
from conftest import randomize

from planx_core.semantic_branch import BranchConfig, SemanticBranch
from planx_core.training.flow import Dropout, drop_text, flow_loss, noise_latents, object_emphasis
from planx_core.wan.dit import WanModel


def oracle(x0):
    """A 'model' that knows x0: v = (x_t - x0) / sigma, garbage on frames at timestep 0."""

    def model(x_t, t, context, plan=None):
        sigma = (t / 1000).view(t.shape[0], 1, t.shape[1], 1, 1)  # [B, 1, F, 1, 1]
        v = (x_t - x0) / sigma.clamp_min(1e-12)
        return torch.where(sigma > 0, v, torch.full_like(v, 1e6))

    return model


def test_noising_target_and_pinned_first_frame():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 5, 2, 2)
    pin = torch.tensor([True, False, True, False])
    s = noise_latents(x0, gen, shift=3.0, pin_first=pin)
    sigma = s.t[:, 1:2].view(4, 1, 1, 1, 1) / 1000
    torch.testing.assert_close(s.x_t[:, :, 1:], x0[:, :, 1:] + sigma * s.target[:, :, 1:])  # x_t = x0 + sigma v
    assert (s.t[pin, 0] == 0).all() and (s.t[~pin, 0] > 0).all()
    torch.testing.assert_close(s.x_t[pin, :, 0], x0[pin, :, 0])
    assert s.weight[pin, 0, 0].eq(0).all() and s.weight[:, 0, 1:].eq(1).all()


def test_a_clean_prefix_is_given_and_not_predicted():
    """`prefix=2`: every sample's first two frames are x0 at timestep 0 and weigh nothing in the loss (the
    oracle's garbage there would otherwise dominate it), the rest are noised as usual."""
    x0 = torch.randn(3, 4, 5, 2, 2)
    s = noise_latents(x0, torch.Generator().manual_seed(2), shift=3.0, prefix=2)
    assert torch.equal(s.x_t[:, :, :2], x0[:, :, :2]) and (s.t[:, :2] == 0).all() and (s.t[:, 2:] > 0).all()
    assert s.weight[:, 0, :2].eq(0).all() and s.weight[:, 0, 2:].eq(1).all()
    seen = []

    def model(x_t, t, context, plan=None):
        seen.append((x_t, t))
        return oracle(x0)(x_t, t, context)

    loss = flow_loss(model, x0, torch.zeros(3, 2, 8), torch.zeros(1, 2, 8), None, torch.Generator(), prefix=2)
    assert (seen[0][1][:, :2] == 0).all() and torch.equal(seen[0][0][:, :, :2], x0[:, :, :2])
    assert float(loss) < 1e-6  # the oracle's 1e6 on the given frames is not counted


def test_loss_counts_only_predicted_frames():
    x0 = torch.randn(3, 4, 5, 2, 2)
    gen = torch.Generator().manual_seed(1)
    loss = flow_loss(
        oracle(x0),
        x0,
        torch.zeros(3, 2, 8),
        torch.zeros(1, 2, 8),
        None,
        gen,
        dropout=Dropout(text=0.0, plan=0.0, first_frame=1.0),
    )
    assert float(loss) < 1e-8  # the oracle is exact wherever a velocity is asked for


def test_object_emphasis_weighs_what_stands_out_from_the_background():
    """A plain clip weighs 1 everywhere; a blob on it weighs more than its background, and more with strength."""
    plain = torch.full((2, 4, 3, 6, 6), 0.3)
    assert torch.equal(object_emphasis(plain, 2.0), torch.ones(2, 1, 3, 6, 6))
    blob = plain.clone()
    blob[0, :, :, 2:4, 2:4] = 1.5  # [C, F, 2, 2] object on sample 0 only
    weights = object_emphasis(blob, 2.0)  # [B, 1, F, H, W]
    assert weights.shape == (2, 1, 3, 6, 6)
    assert float(weights[0, 0, :, 2:4, 2:4].min()) > 5.0 * float(weights[0, 0, :, 0, 0].max())
    assert torch.equal(weights[1], torch.ones(1, 3, 6, 6))  # the other sample's weights are its own
    assert float(object_emphasis(blob, 4.0)[0, 0, 0, 2, 2]) > float(weights[0, 0, 0, 2, 2])


def test_emphasis_moves_the_loss_towards_the_object_and_keeps_its_scale():
    """With a model wrong by the same amount everywhere the weighted mean equals the plain one; wrong only on
    the object, the emphasised loss is larger."""
    x0 = torch.zeros(2, 4, 3, 6, 6)
    x0[:, :, :, 2:4, 2:4] = 1.0  # [B, C, F, 2, 2] object

    def off_by(error):
        def model(x_t, t, context, plan=None):
            sigma = (t / 1000).view(t.shape[0], 1, t.shape[1], 1, 1)  # [B, 1, F, 1, 1]
            return (x_t - x0) / sigma + error  # [B, C, F, H, W]

        return model

    def loss(model, emphasis):
        return float(
            flow_loss(
                model,
                x0,
                torch.zeros(2, 2, 8),
                torch.zeros(1, 2, 8),
                None,
                torch.Generator().manual_seed(3),
                dropout=Dropout(0.0, 0.0, 0.0),
                emphasis=emphasis,
            )
        )

    uniform = torch.full_like(x0, 0.5)
    assert abs(loss(off_by(uniform), 2.0) - loss(off_by(uniform), 0.0)) < 1e-5
    on_object = torch.zeros_like(x0)
    on_object[:, :, :, 2:4, 2:4] = 0.5
    assert loss(off_by(on_object), 2.0) > 3.0 * loss(off_by(on_object), 0.0)


def test_text_dropout_uses_the_empty_prompt():
    gen = torch.Generator().manual_seed(0)
    context, empty = torch.ones(64, 3, 2), torch.zeros(1, 3, 2)
    assert drop_text(context, empty, 0.0, gen).eq(1).all() and drop_text(context, empty, 1.0, gen).eq(0).all()
    dropped = (drop_text(context, empty, 0.5, gen).sum((1, 2)) == 0).float().mean()
    assert 0.25 < float(dropped) < 0.75


def test_a_few_steps_fit_a_batch_with_a_plan(tiny_config):
    torch.manual_seed(0)
    model = randomize(WanModel(tiny_config), std=0.05).train()
    branch = SemanticBranch(
        BranchConfig(
            code_dim=8, dim=tiny_config.dim, num_heads=tiny_config.num_heads, num_layers=tiny_config.num_layers
        )
    )
    x0 = torch.randn(2, tiny_config.in_dim, 2, 4, 4)
    context, empty = torch.randn(2, 4, tiny_config.text_dim), torch.zeros(1, 4, tiny_config.text_dim)
    params = list(model.parameters()) + list(branch.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    losses = []
    for step in range(25):
        plan = branch.condition(
            torch.randn(1, 2 * 4, 8, generator=torch.Generator().manual_seed(9)), [0.0, 1.0], (2, 2)
        )
        loss = flow_loss(
            model,
            x0,
            context,
            empty,
            plan,
            torch.Generator().manual_seed(step % 2),
            dropout=Dropout(text=0.0, plan=0.0),
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert branch.attn["0"].v.weight.grad is not None and branch.attn["0"].v.weight.grad.abs().sum() > 0
    assert losses[-1] < 0.6 * losses[0]
