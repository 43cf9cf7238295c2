;;; The editor's side of the test: open the file, connect, ask for completions after
;;; "return " and accept the first one as completion-in-region would. Prints one JSON line.
(require 'json)

(defun editloop-drive (connect connected-p capf-function)
  (find-file (getenv "EDITLOOP_TEST_FILE"))
  (python-mode)
  (funcall connect)
  (let ((deadline (+ (float-time) 60)) (up nil))
    (while (and (not (setq up (funcall connected-p))) (< (float-time) deadline))
      (accept-process-output nil 0.2))
    (goto-char (point-min))
    (search-forward "return ")
    (let* ((capf (and up (funcall capf-function)))
           (items (and capf (mapcar #'substring-no-properties (all-completions "" (nth 2 capf))))))
      (when items
        (insert (car items))
        (funcall (plist-get (nthcdr 3 capf) :exit-function) (car items) 'finished)
        (accept-process-output nil 1))
      (princ (concat "EDITLOOP-RESULT "
                     (json-encode `((connected . ,(if up t :json-false))
                                    (items . ,(vconcat items))
                                    (line . ,(buffer-substring-no-properties
                                              (line-beginning-position) (line-end-position)))))
                     "\n"))))
  (kill-emacs 0))
