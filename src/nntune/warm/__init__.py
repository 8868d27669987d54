"""The warm runner: servers that import TensorFlow once and fork each stage.

``client`` is the only module a stage imports (stdlib only); ``server`` forks the stages;
``launcher`` starts and stops the servers for one ``nntune run`` or ``nntune search``.
Editing the server or the launcher retrains nothing."""
