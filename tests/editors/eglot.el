;;; Drives `editloop lsp' from Emacs's eglot with README's snippet; run by tests/test_editors_emacs.py.
(require 'eglot)
(setq eglot-sync-connect 60)

;; README's snippet, verbatim.
(add-to-list 'eglot-server-programs '(python-mode "editloop" "lsp"))

(load (expand-file-name "drive.el" (file-name-directory load-file-name)))
(editloop-drive
 (lambda () (apply #'eglot (eglot--guess-contact)))
 #'eglot-current-server
 #'eglot-completion-at-point)
