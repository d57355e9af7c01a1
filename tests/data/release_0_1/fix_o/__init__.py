from .module import FixedModel
