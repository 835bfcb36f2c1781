"""The viewer's panels, one widget per picture, each named for what it shows."""

from __future__ import annotations

from visualizer.panels.base import Panel
from visualizer.panels.gradient_flow import GradientFlowPanel
from visualizer.panels.jacobian import JacobianPanel
from visualizer.panels.overview import OverviewPanel
from visualizer.panels.state_heatmap import StateHeatmapPanel
from visualizer.panels.text import TextPanel
from visualizer.panels.training_curves import TrainingCurvesPanel
from visualizer.panels.weight_grads import WeightGradsPanel

__all__ = ["PANELS", "Panel"]

PANELS: dict[str, type[Panel]] = {
    panel.name: panel
    for panel in (
        TrainingCurvesPanel,
        StateHeatmapPanel,
        GradientFlowPanel,
        JacobianPanel,
        WeightGradsPanel,
        OverviewPanel,
        TextPanel,
    )
}
