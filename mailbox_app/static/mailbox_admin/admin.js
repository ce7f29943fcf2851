// The mailbox admin: the copy button beside a shortened id (mailbox_app/admin/links.py `id_cell`)
// copies the whole id. The clipboard API needs a secure context (https or localhost); elsewhere a
// hidden textarea and execCommand("copy") do it.
"use strict";

function mbCopyFallback(text) {
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "fixed";
  area.style.opacity = "0";
  document.body.appendChild(area);
  area.select();
  try {
    return document.execCommand("copy");
  } finally {
    area.remove();
  }
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button.mb-copy");
  if (!button) {
    return;
  }
  event.preventDefault();
  const text = button.dataset.copy;
  const done = () => {
    button.classList.add("mb-copied");
    setTimeout(() => button.classList.remove("mb-copied"), 1500);
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(done, () => mbCopyFallback(text) && done());
  } else if (mbCopyFallback(text)) {
    done();
  }
});
