from tests.controller.conftest import kube

__all__ = ["kube"]
