import gc
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(scope="session")
def native():
    """rx.RNN's compiled kernels, loaded (built on first use); the test is skipped, saying
    why, where they cannot be built or loaded."""
    from keras_rnnx import _native

    module = _native.load()
    if module is None:
        pytest.skip(_native.status())
    return module


@pytest.fixture(autouse=True)
def _qt_widgets_deleted_with_their_test(request):
    """After a Qt test: the widgets it closed (pytest-qt's `qtbot.addWidget` calls
    `deleteLater` on them) are deleted, and the Python cycles that held them collected, here,
    not at some later garbage collection or event loop in the middle of another test (where
    pyqtgraph items found their ViewBox gone)."""
    yield
    if not {"qtbot", "qapp"} & set(request.fixturenames):
        return
    from PyQt6 import QtCore

    if QtCore.QCoreApplication.instance() is None:
        return
    deferred = QtCore.QEvent.Type.DeferredDelete
    QtCore.QCoreApplication.sendPostedEvents(None, deferred)
    gc.collect()
    QtCore.QCoreApplication.sendPostedEvents(None, deferred)
