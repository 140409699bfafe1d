"""Where versions registered before tasks/ was grouped by concern find their model class: MLflow
pickled it under this module path. New versions name tasks.governance.serving."""
from tasks.governance.serving import AdapterChatModel  # noqa: F401
