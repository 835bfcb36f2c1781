"""The keras-rnnx desktop viewer (PyQt6 + pyqtgraph). It never imports TensorFlow or Keras."""
