"""Networks (``networks``) and the LightningModules that train them."""
