"""How tools/test.py edits a config: by registered class, not type name."""

import argparse
import importlib.util
import os.path as osp

import pytest
from mmengine.config import Config
from mmseg.engine.hooks import SegVisualizationHook
from mmseg.registry import HOOKS, METRICS

from mmseg_dfq.engine import DomainVisualizationHook
from mmseg_dfq.evaluation import DomainMetric

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def load_test_tool():
    spec = importlib.util.spec_from_file_location(
        '_tool_test', osp.join(REPO, 'tools', 'test.py')
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def tool():
    return load_test_tool()


@pytest.fixture(scope='module')
def custom_classes():
    """A renamed DomainMetric and a custom visualisation hook."""
    name = 'RenamedDomainMetricForTest'
    if name not in METRICS.module_dict:

        @METRICS.register_module(name=name)
        class Renamed(DomainMetric):
            pass

    hook = 'OwnVisHookForTest'
    if hook not in HOOKS.module_dict:

        @HOOKS.register_module(name=hook)
        class Own(SegVisualizationHook):
            pass

    return name, hook


def vis_cfg(hook_type):
    return Config(
        dict(
            default_scope='mmseg',
            default_hooks=dict(visualization=dict(type=hook_type)),
            visualizer=dict(type='SegLocalVisualizer'),
        )
    )


def test_only_mmseg_visualization_hook_becomes_ours(tool, custom_classes):
    args = argparse.Namespace(show=False, show_dir='out', wait_time=1)
    for hook_type in (
        'SegVisualizationHook',
        'mmseg.SegVisualizationHook',
        SegVisualizationHook,
    ):
        cfg = tool.trigger_visualization_hook(vis_cfg(hook_type), args)
        vis = cfg.default_hooks.visualization
        assert vis.type == 'DomainVisualizationHook', hook_type
        assert vis.draw and vis.interval == 1
        assert cfg.visualizer.save_dir == 'out'
    # A subclass (ours or a user's) is what the config asked for: kept.
    _, own = custom_classes
    for hook_type in ('DomainVisualizationHook', own, DomainVisualizationHook):
        cfg = tool.trigger_visualization_hook(vis_cfg(hook_type), args)
        assert cfg.default_hooks.visualization.type == hook_type


def test_per_case_file_finds_a_domain_metric_by_class(tool, custom_classes):
    renamed, _ = custom_classes
    for metric_type in (
        'DomainMetric',
        'mmseg.DomainMetric',
        renamed,
        DomainMetric,
    ):
        cfg = Config(
            dict(
                default_scope='mmseg',
                test_evaluator=[
                    dict(type='IoUMetric'),
                    dict(type=metric_type),
                ],
            )
        )
        tool.set_per_case_file(cfg, 'cases.csv')
        assert cfg.test_evaluator[1].per_case_file == 'cases.csv'
        assert 'per_case_file' not in cfg.test_evaluator[0]
    cfg = Config(dict(test_evaluator=dict(type='IoUMetric')))
    with pytest.raises(SystemExit, match='exactly one DomainMetric'):
        tool.set_per_case_file(cfg, 'cases.csv')


def test_tta_needs_the_config_keys(tool):
    model = dict(type='EncoderDecoder')
    cfg = Config(
        dict(
            model=model,
            test_dataloader=dict(dataset=dict(pipeline=[dict(type='A')])),
        )
    )
    with pytest.raises(SystemExit, match='tta_model and tta_pipeline'):
        tool.enable_tta(cfg, 'x.py')
    cfg.tta_model = dict(type='SegTTAModel')
    with pytest.raises(SystemExit, match=r'needs tta_pipeline .*x\.py'):
        tool.enable_tta(cfg, 'x.py')
    cfg.tta_pipeline = [dict(type='B')]
    tool.enable_tta(cfg, 'x.py')
    assert cfg.model.type == 'SegTTAModel'
    assert cfg.model.module == model
    assert cfg.test_dataloader.dataset.pipeline == [dict(type='B')]
